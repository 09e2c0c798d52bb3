"""HellaSwag scoring (llm.c's EvalLoader): packing, completion losses, the trainer's eval lines."""

import dataclasses

import numpy as np
import pytest

from llmc.core import cpu
from llmc.core.config import GPTConfig
from llmc.core.errors import LlmcError
from llmc.core.evaluate import check_examples, eval_batches, evaluate
from llmc.core.formats import EvalExample, read_eval_shard, write_eval_shard, write_model, write_shard
from llmc.core.init import random_init
from llmc.core.model import GPT
from llmc.core.train import Trainer
from llmc.core.train_config import TrainConfig

CFG = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=2, num_heads=2, channels=32)


def make_examples(n: int, seed: int = 0) -> list[EvalExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ctx = rng.integers(0, CFG.vocab_size, rng.integers(1, 8)).tolist()
        comps = [rng.integers(0, CFG.vocab_size, rng.integers(1, 6)).tolist() for _ in range(4)]
        out.append(EvalExample(i, int(rng.integers(0, 4)), ctx, comps))
    return out


def completion_loss(params: np.ndarray, context: list[int], completion: list[int]) -> float:
    """Mean cross-entropy of the completion after the context, from one unpacked forward."""
    tokens = context + completion
    model = GPT(CFG, cpu, params, 1, len(tokens))
    model.set_batch(np.asarray(tokens)[None])
    model.forward(with_targets=False)
    logits = model.acts["logits"][0, :, : CFG.vocab_size].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    n = len(context)
    return float(np.mean([-logp[n - 1 + i, t] for i, t in enumerate(completion)]))


def test_packing():
    ex = EvalExample(0, 2, [5, 6, 7], [[1], [2, 3], [4], [8, 9, 10]])
    (batch,) = eval_batches([ex], 4, 8)
    assert batch.inputs[1].tolist() == [5, 6, 7, 2, 3, 0, 0, 0]
    assert batch.targets[1].tolist() == [0, 0, 2, 3, 0, 0, 0, 0]
    assert batch.mask[3].tolist() == [False, False, True, True, True, False, False, False]
    assert batch.labels == [2]


@pytest.mark.parametrize("B", [4, 8, 12])  # 1, 2 and 3 examples per batch (the last batch partly empty)
def test_accuracy_matches_unpacked_scoring(tmp_path, B):
    params = random_init(CFG, seed=5) * 3
    examples = make_examples(7)
    write_eval_shard(tmp_path / "hs.bin", examples)
    examples = read_eval_shard(tmp_path / "hs.bin")
    check_examples(examples, B, 16, CFG.vocab_size, "hs.bin")
    model = GPT(CFG, cpu, params, B, 16)
    predicted = [int(np.argmin([completion_loss(params, ex.context, c) for c in ex.completions])) for ex in examples]
    expected = np.mean([p == ex.label for p, ex in zip(predicted, examples)])
    assert 0 < expected < 1  # a mix of right and wrong answers
    assert evaluate(model, examples) == pytest.approx(expected)


@pytest.mark.parametrize("change, B, T, message", [
    (lambda ex: None, 2, 16, "batch size -b >= 4"),
    (lambda ex: ex.completions.pop(), 4, 16, "3 completions"),
    (lambda ex: ex.context.extend([1] * 20), 4, 16, "more than -t 16"),
    (lambda ex: ex.completions[1].append(CFG.vocab_size), 4, 16, "token id 101"),
    (lambda ex: ex.completions[2].clear(), 4, 16, "empty context or completion"),
])
def test_bad_examples(change, B, T, message):
    examples = make_examples(3)
    change(examples[1])
    with pytest.raises(LlmcError, match=message):
        check_examples(examples, B, T, CFG.vocab_size, "hs.bin")


def test_trainer_logs_hellaswag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_model("model.bin", CFG, random_init(CFG))
    rng = np.random.default_rng(0)
    write_shard("train.bin", rng.integers(0, CFG.vocab_size, 800))
    cfg = TrainConfig(train_data="train.bin", val_data="train.bin", model="model.bin", output_dir="out",
                      B=4, T=16, max_steps=4, val_every=2, val_max_steps=1, sample_every=0, hellaswag=1)
    lines: list[str] = []
    Trainer(dataclasses.replace(cfg, output_dir=None), cpu, out=lines.append)  # no eval file at the default path
    assert "HellaSwag eval not found at data/hellaswag/hellaswag_val.bin, skipping its evaluation" in lines
    (tmp_path / "data" / "hellaswag").mkdir(parents=True)
    write_eval_shard("data/hellaswag/hellaswag_val.bin", make_examples(5))
    Trainer(cfg, cpu, out=lines.append).run()
    log = (tmp_path / "out" / "main.log").read_text().splitlines()
    evals = [ln for ln in log if " eval:" in ln]
    assert [ln.split()[0] for ln in evals] == ["s:2", "s:4"]  # llm.c: after step 0, every -v, and at the end
    assert all(float(ln.split("eval:")[1]) in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for ln in evals)

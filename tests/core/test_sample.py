"""KV-cache generation against the training model's forward, llm.c's sampler, streaming decode."""

import re

import numpy as np
import pytest

from llmc.core import cpu
from llmc.core.config import GPTConfig
from llmc.core.errors import LlmcError
from llmc.core.init import random_init
from llmc.core.model import GPT
from llmc.core.rand import XorShift
from llmc.core.model import KVCacheModel
from llmc.core.sample import Decoder, ReforwardModel, generate, next_token, sample_softmax

CFG = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=2, num_heads=2, channels=32)


@pytest.fixture(scope="module")
def params():
    p = random_init(CFG, seed=3)
    p *= 4  # sharper logits than a fresh init, so sampling is not near-uniform
    return p


def full_forward_logits(params, tokens) -> np.ndarray:
    """(len(tokens), V) logits from core/model.py's GPT (the training forward)."""
    model = GPT(CFG, cpu, params, 1, len(tokens))
    model.set_batch(np.asarray(tokens)[None])
    model.forward(with_targets=False)
    return model.acts["logits"][0, :, : CFG.vocab_size].copy()


def test_kv_cache_logits_match_full_forward(params):
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, CFG.max_seq_len).tolist()
    ref = full_forward_logits(params, tokens)
    one_by_one = KVCacheModel(CFG, params, np, len(tokens))
    logits = np.stack([one_by_one.forward([t]) for t in tokens])
    np.testing.assert_allclose(logits, ref, rtol=0, atol=2e-5)
    chunks = KVCacheModel(CFG, params, np, len(tokens))  # a prefill of 11 positions, then 21 more
    np.testing.assert_allclose(chunks.forward(tokens[:11]), ref[10], atol=2e-5)
    np.testing.assert_allclose(chunks.forward(tokens[11:]), ref[-1], atol=2e-5)
    with pytest.raises(LlmcError, match="past the KV cache"):
        chunks.forward([0])


def test_narrow_parameters_are_widened_exactly(params):
    """The GPU trainer samples from its bf16 parameters: the cache widens them a layer at a time to the same
    fp32 values a whole fp32 copy would hold (NumPy's float16 stands in for bf16 here)."""
    narrow = params.astype(np.float16)
    tokens = [3, 50, 7, 99, 12]
    want = KVCacheModel(CFG, narrow.astype(np.float32), np, len(tokens)).forward(tokens)
    got = KVCacheModel(CFG, narrow, np, len(tokens)).forward(tokens)
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_generated_tokens_match_full_forward_sampling(params):
    prompt, n = [5, 17, 99], 25
    tokens = list(generate(KVCacheModel, CFG, params, np, prompt, n, XorShift(7)))
    rng, seq = XorShift(7), list(prompt)
    for _ in range(n):  # the same draws, each from a whole re-forward of the training model
        seq.append(next_token(full_forward_logits(params, seq)[-1], rng))
    assert tokens == seq[len(prompt):]
    assert list(generate(KVCacheModel, CFG, params, np, prompt, n, XorShift(7), kv_cache=False)) == tokens
    assert list(generate(KVCacheModel, CFG, params, np, prompt, n, XorShift(7))) == tokens  # reproducible
    assert list(generate(KVCacheModel, CFG, params, np, prompt, n, XorShift(8))) != tokens


@pytest.mark.parametrize("family", ["gpt2", "llama3"])
def test_reforward_model_samples_as_the_kv_cache(family):
    """The GPU trainer's sampler (the training model's forward over the prefix, at batch 1, sharing the training
    model's parameters) draws the KV cache's tokens from the same fp32 parameters; 64-position tiles cut to
    max_seq_len, and no gradients kept."""
    from llmc.core import families
    fam, cfg, params = families.load("d2:c32:h2:t48:v101" if family == "gpt2" else "llama3:d2:c32:h4:kv2:t48:v101:m16",
                                     seed=3)
    params *= 4
    trained = fam.Model(cfg, cpu, params, 2, 16)
    prompt, n = [5, 17, 99], 40
    want = list(generate(fam.KVCacheModel, cfg, params, np, prompt, n, XorShift(7)))

    def reforward(cfg, p, xp, positions):
        model = ReforwardModel(fam.Model, cpu, cfg, p, positions)
        assert model.model.T == cfg.max_seq_len and model.model.g is None
        assert np.shares_memory(model.model.params, trained.params)
        return model

    for kv_cache in (True, False):
        got = list(generate(reforward, cfg, trained.params, np, prompt, n, XorShift(7), kv_cache=kv_cache))
        assert got == want
    with pytest.raises(LlmcError, match="past the sampler"):
        model = ReforwardModel(fam.Model, cpu, cfg, trained.params, 4)
        model.forward([1, 2, 3, 4, 5])


def test_generation_limits(params):
    assert len(list(generate(KVCacheModel, CFG, params, np, [1, 2], CFG.max_seq_len - 1, XorShift(1)))) == CFG.max_seq_len - 1
    with pytest.raises(LlmcError, match="do not fit"):
        list(generate(KVCacheModel, CFG, params, np, [1, 2], CFG.max_seq_len, XorShift(1)))
    with pytest.raises(LlmcError, match="outside the model's vocab"):
        list(generate(KVCacheModel, CFG, params, np, [CFG.vocab_size], 3, XorShift(1)))


def llmc_sample_softmax(logits: np.ndarray, coin: float) -> int:
    """llm.c's sampler.h sample_softmax, literally: expf, a double norm, a float running cdf."""
    e = [np.exp(np.float32(x)) for x in logits]
    norm = 0.0
    for x in e:
        norm += float(x)
    coin = np.float32(np.float32(coin) * norm)
    cdf = np.float32(0)
    for i, x in enumerate(e):
        cdf = np.float32(cdf + x)
        if coin < cdf:
            return i
    return len(logits) - 1


def test_sample_softmax_is_llmc():
    rng = np.random.default_rng(0)
    rand = XorShift(1337)
    for _ in range(200):
        logits = (rng.standard_normal(50) * 3).astype(np.float32)
        coin = rand.f32()
        assert sample_softmax(logits, coin) == llmc_sample_softmax(logits, coin)
    # large logits: llm.c's expf would overflow; subtracting the max keeps the draw sane
    assert sample_softmax(np.array([500.0, 1000.0, 0.0], np.float32), 0.5) == 1


def test_temperature_and_top_k():
    logits = np.array([1.0, 3.0, 2.0, 2.9, -1.0], np.float32)
    assert next_token(logits, XorShift(1), temperature=0) == 1
    assert {next_token(logits, XorShift(s), top_k=1) for s in range(1, 50)} == {1}
    assert {next_token(logits, XorShift(s), top_k=2) for s in range(1, 200)} == {1, 3}
    hot = {next_token(logits, XorShift(s), temperature=100.0) for s in range(1, 200)}
    assert hot == {0, 1, 2, 3, 4}
    # a tiny temperature is all but greedy: no fp32 overflow (1e-40 is subnormal, 1e-50 rounds to 0 in fp32)
    for temperature in (1e-40, 1e-50, 1e-300):
        assert {next_token(logits, XorShift(s), temperature=temperature) for s in range(1, 50)} == {1}


def test_decoder_streams_split_characters():
    pieces = {0: "é".encode()[:1], 1: "é".encode()[1:] + b"!", 2: b"\xff"}
    d = Decoder(pieces.__getitem__, eot=9)
    assert d(0) == "" and d(1) == "é!"
    assert d(2) + d.flush() == "\ufffd"


def test_gpt2_decoder_round_trip(tmp_path, monkeypatch):
    from llmc.core.sample import encode_prompt, load_decoder
    monkeypatch.chdir(tmp_path)  # no gpt2_tokenizer.bin here: GPT-2's BPE
    d = load_decoder()
    text = "Hello, wörld — ünïcode ✓"
    assert "".join(d(t) for t in encode_prompt(text)) + d.flush() == text
    assert d.eot == 50256 and d(50256) == "<|endoftext|>" and d.path is None


def test_tokenizer_file_decoder(tmp_path, monkeypatch):
    from llmc.core.formats import write_tokenizer
    from llmc.core.sample import LLMC_TOKENIZER, load_decoder
    write_tokenizer(tmp_path / "tok.bin", [b"a", "é".encode()[:1], "é".encode()[1:], b"<|eot|>"], eot=3)
    d = load_decoder(tmp_path / "tok.bin")
    assert d.eot == 3 and d.path == str(tmp_path / "tok.bin")
    assert "".join(d(t) for t in [0, 1, 2, 3, 7]) + d.flush() == "aé<|eot|><|7|>"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok.bin").rename(LLMC_TOKENIZER)  # llm.c's file in the cwd is the default
    assert load_decoder().path == LLMC_TOKENIZER
    for eot in (4, -1):  # outside its own 4 tokens: the file is at fault
        write_tokenizer(tmp_path / "bad.bin", [b"a", b"b", b"c", b"d"], eot=eot)
        message = f"{tmp_path / 'bad.bin'}: end-of-text id {eot} is outside its 4 tokens"
        with pytest.raises(LlmcError, match=f"^{re.escape(message)}$"):
            load_decoder(tmp_path / "bad.bin")


def test_training_samples_as_llmc(tmp_path):
    """Mid-run samples: from <|endoftext|>, genT - 1 tokens, xorshift seeded 1337, streamed."""
    from llmc.core.config import GPT2_EOT, GPT2_VOCAB, pad_vocab
    from llmc.core.formats import write_model, write_shard
    from llmc.core.sample import load_decoder
    from llmc.core.train import Trainer
    from llmc.core.train_config import TrainConfig

    cfg = GPTConfig(16, GPT2_VOCAB, pad_vocab(GPT2_VOCAB), 1, 2, 16)
    write_model(tmp_path / "m.bin", cfg, random_init(cfg) * 8)
    write_shard(tmp_path / "d.bin", np.random.default_rng(0).integers(0, GPT2_VOCAB, 500))
    lines, text = [], []
    trainer = Trainer(TrainConfig(train_data=str(tmp_path / "d.bin"), val_data=str(tmp_path / "d.bin"),
                                  model=str(tmp_path / "m.bin"), B=4, T=8, max_steps=2, val_max_steps=1,
                                  sample_every=2, gen_tokens=9), cpu, out=lines.append, stream=text.append)
    trainer.run()  # one sample, at step 2 (the last step)
    assert lines.count("generating:\n---") == 1 and "\n---" in lines
    decoder = load_decoder()
    tokens = generate(KVCacheModel, cfg, trainer.model.params, np, [GPT2_EOT], 8, XorShift(1337))
    assert "".join(text) == "".join(decoder(t) for t in tokens) + decoder.flush()
    assert len(text) == 9  # streamed token by token, then the decoder's flush


def test_training_samples_need_a_tokenizer_that_fits(tmp_path, monkeypatch):
    """A model without GPT-2's <|endoftext|> trains without samples, and says whose EOT it lacks; a broken
    tokenizer file stops the start, not the run at its first sample."""
    from llmc.core.formats import write_model, write_shard, write_tokenizer
    from llmc.core.train import Trainer
    from llmc.core.train_config import TrainConfig

    monkeypatch.chdir(tmp_path)
    write_model("m.bin", CFG, random_init(CFG))
    write_shard("d.bin", np.random.default_rng(0).integers(0, CFG.vocab_size, 500))
    cfg = TrainConfig(train_data="d.bin", val_data="d.bin", model="m.bin", B=4, T=8, max_steps=2, val_max_steps=1,
                      sample_every=1)
    lines: list[str] = []
    Trainer(cfg, cpu, out=lines.append).run()
    assert lines.count("no samples: the GPT-2 tokenizer's <|endoftext|> (50256) is outside the model's vocab of 101") == 1
    write_tokenizer("gpt2_tokenizer.bin", [bytes([i]) for i in range(10)], 12)  # llm.c's file, read from the cwd
    with pytest.raises(LlmcError, match="end-of-text id 12 is outside its 10 tokens"):
        Trainer(cfg, cpu, out=lines.append)

"""The GPT-2 model (core/model.py) on the GPU backend against the CPU backend: one forward/backward
(loss and every gradient), then a few AdamW steps with the forward/backward as a CUDA graph."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cpu, gpu, graph_steps  # noqa: E402

from llmc.core.config import GPTConfig  # noqa: E402
from llmc.core.init import random_init  # noqa: E402
from llmc.core.model import GPT  # noqa: E402

pytestmark = pytest.mark.gpu

CFG = GPTConfig(max_seq_len=64, vocab_size=200, padded_vocab_size=256, num_layers=2, num_heads=4, channels=128)
B, T = 4, 64


@pytest.mark.parametrize("recompute,gelu_fusion", [(0, 2), (2, 0)])
def test_gpu_model_matches_cpu(recompute, gelu_fusion):
    rng = np.random.default_rng(5)
    params = random_init(CFG).astype(gpu.act_dtype).astype(np.float32)  # both start from bf16 values
    x = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    y = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    models = {name: GPT(CFG, backend, params, B, T, recompute=recompute, gelu_fusion=gelu_fusion)
              for name, backend in (("cpu", cpu), ("gpu", gpu))}
    for model in models.values():
        model.set_batch(x, y)
        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
    ref, got = models["cpu"], models["gpu"]
    assert abs(got.mean_loss() - ref.mean_loss()) < 1e-2
    for name in ref.g:
        assert_close(gpu.to_host(got.g[name]), ref.g[name], 5e-2, f"grad {name}")

    losses = {name: graph_steps(model, 6)[0] for name, model in models.items()}
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], atol=2e-2)
    assert losses["gpu"][-1] < losses["gpu"][0] - 0.1  # it trains


@pytest.mark.parametrize("family", ["gpt2", "llama3"])
def test_samples_from_the_gpu_trainers_bf16_parameters(family):
    """train-gpu's mid-run samples: the KV cache on CuPy reads the training model's bf16 parameters, widened a
    layer at a time; its logits are NumPy's from the same values in fp32 (to summation order), its tokens
    the same."""
    from llmc.core import families
    from llmc.core.rand import XorShift
    from llmc.core.sample import generate

    descriptor = "d2:c64:h4:t32:v300" if family == "gpt2" else "llama3:d2:c64:h4:kv2:t32:v300:m16"
    fam, cfg, params = families.load(descriptor, seed=3)
    params = params * 8  # sharper than a fresh init: sampling far from uniform
    model = fam.Model(cfg, gpu, params, 1, cfg.max_seq_len)
    widened = gpu.to_host(model.params)  # the bf16 values the trainer holds, in fp32
    tokens = [1, 5, 9, 2]
    got = fam.KVCacheModel(cfg, model.params, gpu.xp, len(tokens)).forward(tokens)
    want = fam.KVCacheModel(cfg, widened, np, len(tokens)).forward(tokens)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    draws = [list(generate(fam.KVCacheModel, cfg, p, xp, [0], 20, XorShift(1337)))
             for p, xp in ((model.params, gpu.xp), (widened, np))]
    assert draws[0] == draws[1]


@pytest.mark.parametrize("family", ["gpt2", "llama3"])
def test_reforward_sampler_on_the_gpu(family):
    """train-gpu's mid-run sampler (llm.c's way: the training model's bf16 forward re-run over the prefix at
    batch 1, one CUDA graph a token, sharing the trainer's parameters): its logits are the fp32 KV cache's on
    the same bf16 values within bf16's rounding, position after position, through the graph's replays."""
    from llmc.core import families
    from llmc.core.sample import ReforwardModel

    descriptor = "d2:c64:h4:t128:v300" if family == "gpt2" else "llama3:d2:c64:h4:kv2:t128:v300:m16"
    fam, cfg, params = families.load(descriptor, seed=3)
    trainer = fam.Model(cfg, gpu, params, 2, 64)
    widened = gpu.to_host(trainer.params)
    tokens = [1, 5, 9, 2, 7, 7, 3]
    sampler = ReforwardModel(fam.Model, gpu, cfg, trainer.params, 70)
    assert sampler.model.T == 128 and sampler.model.g is None
    reference = fam.KVCacheModel(cfg, widened, np, 70)
    for t in tokens:  # the first call eager, the second captures, the rest replay
        got, want = sampler.forward([t]), reference.forward([t])
        assert_close(got, want, 2e-2, f"logits at position {sampler.pos - 1}")

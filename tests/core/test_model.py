"""The GPT model on the NumPy backend against the independent PyTorch GPT-2 (core/torch_gpt2.py):
logits, loss and every gradient for each recompute/GELU-fusion setting, ten AdamW steps with
clipping and weight decay, and gradient accumulation."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llmc.core import cpu  # noqa: E402
from llmc.core.config import DECAYED_PARAMS, GPTConfig, param_shapes  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.flat_model import views  # noqa: E402
from llmc.core.model import GPT  # noqa: E402
from llmc.core.primitives import AdamW  # noqa: E402
from llmc.core.torch_gpt2 import GPT2  # noqa: E402

# (config, B, T): V never a multiple of 128, T not a power of two (T == max_seq_len once), 1/3/4 heads
CASES = [
    (GPTConfig(max_seq_len=16, vocab_size=37, padded_vocab_size=128, num_layers=2, num_heads=3, channels=12), 2, 7),
    (GPTConfig(max_seq_len=11, vocab_size=130, padded_vocab_size=256, num_layers=3, num_heads=4, channels=16), 3, 11),
    (GPTConfig(max_seq_len=9, vocab_size=65, padded_vocab_size=128, num_layers=1, num_heads=1, channels=8), 1, 5),
]
IDS = ["L2-NH3-T7", "L3-NH4-T11", "L1-NH1-T5"]


def random_params(cfg: GPTConfig, seed: int) -> np.ndarray:
    """Every tensor random, biases and layernorm shifts included (an init's zeros and ones would hide
    a swapped or missing bias); wte's padded rows random too, which the loss must never see."""
    rng = np.random.default_rng(seed)
    p = {name: rng.normal(0.0, 0.1, shape) for name, shape in param_shapes(cfg).items()}
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name] += 1.0
    return np.concatenate([a.reshape(-1) for a in p.values()]).astype(np.float32)


def random_batch(cfg: GPTConfig, B: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(0, cfg.vocab_size, size=B * T + 1, dtype=np.int32)
    return tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)


def torch_reference(cfg: GPTConfig, params: np.ndarray, x: np.ndarray, y: np.ndarray):
    """float64 logits (B, T, Vp), loss and flat grads from the PyTorch GPT-2."""
    model = GPT2(cfg, params).double()
    logits, loss = model(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
    loss.backward()
    return logits.detach().numpy(), loss.item(), model.flat_grads()


def assert_grads_close(got: np.ndarray, want: np.ndarray, cfg: GPTConfig) -> None:
    g, w = views(got, param_shapes(cfg)), views(want, param_shapes(cfg))
    for name in param_shapes(cfg):
        scale = max(float(np.abs(w[name]).max()), 1e-6)
        np.testing.assert_allclose(g[name], w[name], rtol=1e-4, atol=1e-4 * scale, err_msg=f"d{name}")


@pytest.mark.parametrize("cfg,B,T", CASES, ids=IDS)
@pytest.mark.parametrize("recompute", [0, 1, 2])
@pytest.mark.parametrize("gelu_fusion", [0, 1, 2])
def test_forward_backward_matches_torch(cfg, B, T, recompute, gelu_fusion):
    params = random_params(cfg, seed=B * 100 + T)
    rng = np.random.default_rng(T)
    model = GPT(cfg, cpu, params, B, T, recompute=recompute, gelu_fusion=gelu_fusion)
    # a first step on another batch leaves stale activations and gradients behind
    model.set_batch(*random_batch(cfg, B, T, rng))
    model.forward(dloss=1.0 / (B * T))
    model.backward()

    x, y = random_batch(cfg, B, T, rng)
    want_logits, want_loss, want_grads = torch_reference(cfg, params, x, y)
    model.set_batch(x, y)
    model.forward()  # no dloss: logits stay logits
    np.testing.assert_allclose(model.acts["logits"], want_logits, rtol=1e-4, atol=1e-5)
    assert model.mean_loss() == pytest.approx(want_loss, abs=1e-5)

    model.zero_grad()
    model.forward(dloss=1.0 / (B * T))
    assert model.mean_loss() == pytest.approx(want_loss, abs=1e-5)
    model.backward()
    assert_grads_close(model.grads, want_grads, cfg)
    V = cfg.vocab_size
    assert not model.g["wte"][V:].any()  # padded rows never get a gradient


def test_inference_forward_without_targets():
    cfg, B, T = CASES[0]
    params = random_params(cfg, 1)
    x, y = random_batch(cfg, B, T, np.random.default_rng(2))
    want_logits, _, _ = torch_reference(cfg, params, x, y)
    model = GPT(cfg, cpu, params, B, T)
    model.set_batch(x)
    model.forward(with_targets=False)
    np.testing.assert_allclose(model.acts["logits"], want_logits, rtol=1e-4, atol=1e-5)


def test_model_rejects_bad_settings():
    cfg, B, _ = CASES[0]
    params = random_params(cfg, 1)
    with pytest.raises(LlmcError, match="max_seq_len"):
        GPT(cfg, cpu, params, B, cfg.max_seq_len + 1)
    with pytest.raises(LlmcError, match="recompute"):
        GPT(cfg, cpu, params, B, 4, recompute=3)


def test_ten_adamw_steps_match_torch():
    """llmc's GPT.update against torch.optim.AdamW: betas 0.9/0.95, eps 1e-8, weight decay on the
    2-D weights only, gradients clipped to global norm 1.0 through grad_scale; two batches in turn."""
    cfg, B, T = CASES[1]
    lr, wd, steps = 1e-2, 0.1, 10
    params = random_params(cfg, 3)
    model = GPT(cfg, cpu, params, B, T)
    ref = GPT2(cfg, params).double()
    decayed = [t for n, t in ref.p.items() if n in DECAYED_PARAMS]
    others = [t for n, t in ref.p.items() if n not in DECAYED_PARAMS]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    rng = np.random.default_rng(4)
    batches = [random_batch(cfg, B, T, rng) for _ in range(2)]
    losses, ref_losses, norms = [], [], []
    for step in range(steps):
        x, y = batches[step % 2]
        model.set_batch(x, y)
        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
        losses.append(model.mean_loss())
        model.compute_grad_norm()
        norm = model.grad_norm()
        norms.append(norm)
        model.update(AdamW(lr=lr, weight_decay=wd), step=step + 1, grad_scale=1.0 / norm if norm > 1.0 else 1.0)

        opt.zero_grad()
        _, loss = ref(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
        loss.backward()
        ref_losses.append(loss.item())
        ref_norm = math.sqrt(sum(float((t.grad ** 2).sum()) for t in ref.p.values()))
        assert norm == pytest.approx(ref_norm, rel=1e-4)
        if ref_norm > 1.0:
            for t in ref.p.values():
                t.grad /= ref_norm
        opt.step()
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-4)
    assert any(n > 1.0 for n in norms) and any(n <= 1.0 for n in norms), norms  # both sides of clipping
    assert losses[-1] < losses[0] - 0.1  # it trained
    got, want = views(model.params_host(), param_shapes(cfg)), views(ref.flat_params(), param_shapes(cfg))
    C = cfg.channels
    # the key bias's true gradient is zero (softmax ignores a per-query constant); Adam turns each side's
    # rounding noise there into steps of ~lr, so those entries are left out
    for qkvb in (got["qkvb"], want["qkvb"]):
        qkvb[:, C:2 * C] = 0.0
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-5, err_msg=name)


def test_gradient_accumulation_equals_one_big_batch():
    cfg, B, T = CASES[0]
    params = random_params(cfg, 5)
    x, y = random_batch(cfg, 2 * B, T, np.random.default_rng(6))
    big = GPT(cfg, cpu, params, 2 * B, T)
    big.set_batch(x, y)
    big.forward(dloss=1.0 / (2 * B * T))
    big.backward()

    small = GPT(cfg, cpu, params, B, T)
    small.zero_grad()
    loss = 0.0
    for micro in range(2):
        small.set_batch(x[micro * B:(micro + 1) * B], y[micro * B:(micro + 1) * B])
        small.forward(dloss=1.0 / (B * T * 2))
        small.backward()
        loss += small.mean_loss() / 2
    assert loss == pytest.approx(big.mean_loss(), abs=1e-6)
    np.testing.assert_allclose(small.grads, big.grads, rtol=1e-4, atol=1e-4 * float(np.abs(big.grads).max()))

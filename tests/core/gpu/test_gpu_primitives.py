"""Each GPU primitive against the CPU backend (llmc.core.cpu, fp32) on the same bf16-exact inputs.
Accumulating outputs start from random values, so `+=` versus `=` is checked too."""

import math

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, cpu, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.gpu import attention as gpu_attention, cudnn as gpu_cudnn  # noqa: E402
from llmc.core.primitives import AdamW  # noqa: E402
from llmc.tests.core.interface import check_backend_interface  # noqa: E402

pytestmark = pytest.mark.gpu

BF16_REL = 1e-2  # one bf16 rounding of each output: ~3e-3 relative
GRAD_REL = 2e-2  # gradients through several bf16 roundings


def test_gpu_backend_implements_the_primitive_interface():
    check_backend_interface(gpu)
    assert gpu.name == "gpu" and gpu.xp is cp and np.dtype(gpu.act_dtype).name == "bfloat16"


def test_to_device_to_host_round_trip(rng):
    x = rand(rng, 3, 5)
    d = gpu.to_device(x, gpu.act_dtype)
    assert d.dtype == gpu.act_dtype and isinstance(d, cp.ndarray)
    back = gpu.to_host(d)
    assert back.dtype == np.float32 and np.array_equal(back, x)
    tokens = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(gpu.to_host(gpu.to_device(tokens)), tokens)


@pytest.mark.parametrize("Vp,tokens", [(256, 20), (50304, 50304)])  # many repeats; the scan of counts in tiles
def test_encoder(rng, Vp, tokens):
    B, T, C, maxT = 4, 48, 96, 64
    inp = rng.integers(0, tokens, (B, T)).astype(np.int32)
    inp[1, 7:12] = 3  # repeated tokens, whatever the range
    inp[0, :5] = Vp - 1
    wte, wpe = rand(rng, Vp, C), rand(rng, maxT, C)
    out = cp.empty((B, T, C), gpu.act_dtype)
    gpu.encoder_forward(out, dev(inp), dev(wte), dev(wpe))
    want = np.empty((B, T, C), np.float32)
    cpu.encoder_forward(want, inp, wte, wpe)
    assert_close(host(out), want, BF16_REL, "encoder out")

    dout, dwte0, dwpe0 = rand(rng, B, T, C), rand(rng, Vp, C), rand(rng, maxT, C)
    results = []
    for _ in range(2):  # twice: the backward must be deterministic
        dwte, dwpe = dev(dwte0), dev(dwpe0)
        gpu.encoder_backward(dwte, dwpe, dev(dout), dev(inp))
        results.append((host(dwte), host(dwpe)))
    want_wte, want_wpe = dwte0.copy(), dwpe0.copy()
    cpu.encoder_backward(want_wte, want_wpe, dout, inp)
    assert_close(results[0][0], want_wte, BF16_REL, "dwte")
    assert_close(results[0][1], want_wpe, BF16_REL, "dwpe")
    assert all(np.array_equal(a, b) for a, b in zip(results[0], results[1]))
    # the rows of repeated tokens are where accumulation shows: check them alone too
    rows = np.unique(inp)
    assert_close(results[0][0][rows] - dwte0[rows], want_wte[rows] - dwte0[rows], GRAD_REL, "dwte rows")


@pytest.mark.parametrize("C", [72, 768, 1600])  # 1600: channels past the packs held in registers
def test_layernorm_forward(rng, C):
    B, T = 3, 17
    x1 = rand(rng, B, T, C, scale=2.0)
    w, b = rand(rng, C) + 1.0, rand(rng, C)
    w = w.astype(gpu.act_dtype).astype(np.float32)
    out, mean, rstd = cp.empty((B, T, C), gpu.act_dtype), cp.empty((B, T), cp.float32), cp.empty((B, T), cp.float32)
    gpu.layernorm_forward(out, mean, rstd, dev(x1), dev(w), dev(b))
    want, wmean, wrstd = np.empty((B, T, C), np.float32), np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    cpu.layernorm_forward(want, wmean, wrstd, x1, w, b)
    assert_close(host(out), want, BF16_REL, "layernorm out")
    np.testing.assert_allclose(host(mean), wmean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(rstd), wrstd, rtol=1e-4)


@pytest.mark.parametrize("C", [72, 768, 1600])
@pytest.mark.parametrize("with_sum", [False, True])
def test_layernorm_backward(rng, C, with_sum):
    B, T = 3, 37
    x, w, dout = rand(rng, B, T, C, scale=2.0), rand(rng, C) + 1.0, rand(rng, B, T, C)
    w = w.astype(gpu.act_dtype).astype(np.float32)
    b = rand(rng, C)
    mean, rstd, ln = np.empty((B, T), np.float32), np.empty((B, T), np.float32), np.empty((B, T, C), np.float32)
    cpu.layernorm_forward(ln, mean, rstd, x, w, b)
    dinp0, dw0, db0, dp0 = rand(rng, B, T, C), rand(rng, C), rand(rng, C), rand(rng, C)
    dinp, dw, db, dp = dev(dinp0), dev(dw0), dev(db0), dev(dp0) if with_sum else None
    gpu.layernorm_backward(dinp, dw, db, dev(dout), dev(x), dev(w), cp.asarray(mean), cp.asarray(rstd), dproj_bias=dp)
    want = [dinp0.copy(), dw0.copy(), db0.copy(), dp0.copy() if with_sum else None]
    cpu.layernorm_backward(*want[:3], dout, x, w, mean, rstd, dproj_bias=want[3])
    for got, ref, start, what in zip((dinp, dw, db, dp), want, (dinp0, dw0, db0, dp0),
                                     ("dinp", "dweight", "dbias", "dproj_bias")):
        if got is not None:
            assert_close(host(got) - start, ref - start, GRAD_REL, what)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu,residual", [(True, False), (False, False), (False, True)])
def test_matmul_forward(rng, bias, gelu, residual):
    B, T, C, OC = 2, 40, 64, 192
    x, w = rand(rng, B, T, C), rand(rng, OC, C, scale=0.1)
    b = rand(rng, OC) if bias else None
    r = rand(rng, B, T, OC).astype(gpu.act_dtype).astype(np.float32) if residual else None
    out = cp.empty((B, T, OC), gpu.act_dtype)
    pre = cp.empty((B, T, OC), gpu.act_dtype) if gelu else None
    gpu.matmul_forward(out, dev(x), dev(w), None if b is None else dev(b), pre_gelu=pre,
                       residual=None if r is None else dev(r))
    want, want_pre = np.empty((B, T, OC), np.float32), np.empty((B, T, OC), np.float32) if gelu else None
    cpu.matmul_forward(want, x, w, b, pre_gelu=want_pre, residual=r)
    assert_close(host(out), want, BF16_REL, "matmul out")
    if gelu:
        assert_close(host(pre), want_pre, BF16_REL, "matmul pre_gelu")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
def test_matmul_backward(rng, bias, gelu):
    B, T, C, OC = 2, 40, 64, 1024
    x, w, dout = rand(rng, B, T, C), rand(rng, OC, C, scale=0.1), rand(rng, B, T, OC)
    pre = rand(rng, B, T, C) if gelu else None
    dw0 = rand(rng, OC, C)
    db0 = rand(rng, OC) if bias else None
    dinp, dw, db = cp.full((B, T, C), 7, gpu.act_dtype), dev(dw0), None if db0 is None else dev(db0)
    gpu.matmul_backward(dinp, dw, db, dev(dout), dev(x), dev(w), pre_gelu=None if pre is None else dev(pre))
    want_dinp, want_dw, want_db = np.empty((B, T, C), np.float32), dw0.copy(), None if db0 is None else db0.copy()
    cpu.matmul_backward(want_dinp, want_dw, want_db, dout, x, w, pre_gelu=pre)
    assert_close(host(dinp), want_dinp, BF16_REL, "dinp")
    assert_close(host(dw) - dw0, want_dw - dw0, GRAD_REL, "dweight")
    if bias:
        assert_close(host(db) - db0, want_db - db0, GRAD_REL, "dbias")


def test_gelu(rng):
    x, dout = rand(rng, 4, 8, 96, scale=2.0), rand(rng, 4, 8, 96)
    out = cp.empty(x.shape, gpu.act_dtype)
    gpu.gelu_forward(out, dev(x))
    want = np.empty_like(x)
    cpu.gelu_forward(want, x)
    assert_close(host(out), want, BF16_REL, "gelu")
    d = dev(dout)
    gpu.gelu_backward(d, dev(x), d)  # in place, as the model calls it
    cpu.gelu_backward(want, x, dout)
    assert_close(host(d), want, BF16_REL, "gelu backward")


def _lse_reference(qkv: np.ndarray, NH: int) -> np.ndarray:
    B, T, C3 = qkv.shape
    HS = C3 // 3 // NH
    q, k = (qkv[..., i * C3 // 3:(i + 1) * C3 // 3].reshape(B, T, NH, HS).transpose(0, 2, 1, 3) for i in range(2))
    s = q.astype(np.float64) @ k.transpose(0, 1, 3, 2) / math.sqrt(HS)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    m = s.max(-1)
    return (m + np.log(np.exp(s - m[..., None]).sum(-1))).astype(np.float32)


@pytest.mark.parametrize("backend", ["cudnn", "fallback"])
@pytest.mark.parametrize("B,T,NH,HS", [(2, 64, 4, 64), (3, 50, 2, 32)])
def test_attention(rng, monkeypatch, backend, B, T, NH, HS):
    if backend == "cudnn" and gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
    C = NH * HS
    qkv, dout = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    out, stats = cp.empty((B, T, C), gpu.act_dtype), cp.empty(gpu.attention_stats_shape(B, T, NH), cp.float32)
    gpu.attention_forward(out, stats, dev(qkv), NH)
    want, probs = np.empty((B, T, C), np.float32), np.empty(cpu.attention_stats_shape(B, T, NH), np.float32)
    cpu.attention_forward(want, probs, qkv, NH)
    assert_close(host(out), want, BF16_REL, "attention out")
    np.testing.assert_allclose(host(stats), _lse_reference(qkv, NH), rtol=1e-3, atol=1e-3)

    dqkv = cp.full((B, T, 3 * C), 5, gpu.act_dtype)
    gpu.attention_backward(dqkv, dev(dout), dev(qkv), out, stats, NH)
    want_dqkv = np.empty_like(qkv)
    cpu.attention_backward(want_dqkv, dout, qkv, want, probs, NH)
    got = host(dqkv)
    for i, what in enumerate("qkv"):
        sl = slice(i * C, (i + 1) * C)
        assert_close(got[..., sl], want_dqkv[..., sl], GRAD_REL, f"d{what}")


def test_attention_fallback_reads_cudnn_stats(rng, monkeypatch):
    """Both paths keep the same saved state: a cuDNN forward with a fallback backward is consistent."""
    if gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    B, T, NH, HS = 2, 64, 2, 64
    C = NH * HS
    qkv, dout = dev(rand(rng, B, T, 3 * C)), dev(rand(rng, B, T, C))
    out, stats = cp.empty((B, T, C), gpu.act_dtype), cp.empty((B, NH, T), cp.float32)
    gpu.attention_forward(out, stats, qkv, NH)
    grads = []
    for backend in ("cudnn", "fallback"):
        monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
        dqkv = cp.empty(qkv.shape, gpu.act_dtype)
        gpu.attention_backward(dqkv, dout, qkv, out, stats, NH)
        grads.append(host(dqkv))
    assert_close(grads[1], grads[0], GRAD_REL, "fallback vs cuDNN dqkv")


def test_attention_backward_is_deterministic(rng):
    """The same inputs give the same bits, call after call (a run and its -y 1 resume must not drift apart):
    at a size where cuDNN's flash backward splits the sequence over many blocks."""
    B, T, NH, HS = 4, 1024, 12, 64
    C = NH * HS
    qkv, dout = dev(rand(rng, B, T, 3 * C)), dev(rand(rng, B, T, C))
    out, stats = cp.empty((B, T, C), gpu.act_dtype), cp.empty(gpu.attention_stats_shape(B, T, NH), cp.float32)
    gpu.attention_forward(out, stats, qkv, NH)
    grads = []
    for _ in range(3):
        dqkv = cp.empty(qkv.shape, gpu.act_dtype)
        gpu.attention_backward(dqkv, dout, qkv, out, stats, NH)
        grads.append(host(dqkv))
    assert all(np.array_equal(g.view(np.uint32), grads[0].view(np.uint32)) for g in grads[1:])


# (B, T): fewer rows than SMs, and many rows per persistent block (its double buffering); the
# 70000 vocab is too long for two rows of shared memory (the streaming kernel trains then)
@pytest.mark.parametrize("V,Vp,B,T", [(1000, 1024, 2, 5), (50257, 50304, 2, 5), (1000, 1024, 7, 300),
                                      (50257, 50304, 3, 200), (70000, 70000, 2, 3)])
def test_softmax_crossentropy(rng, V, Vp, B, T):
    logits = rand(rng, B, T, Vp, scale=3.0)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    targets[0, 0] = V - 1
    logits[0, 1, targets[0, 1]] = 16.0  # a confident row (V=1000: p - 1 ~ -5e-3 at the target): no cancellation
    dloss = 1.0 / (B * T)
    losses = cp.empty((B, T), cp.float32)
    lg = dev(logits)
    gpu.softmax_crossentropy(losses, lg, dev(targets), V)  # loss only: logits untouched
    want_losses = np.empty((B, T), np.float32)
    want = logits.copy()
    cpu.softmax_crossentropy(want_losses, want, targets, V)
    np.testing.assert_allclose(host(losses), want_losses, rtol=1e-4, atol=1e-4)
    assert np.array_equal(host(lg), logits)
    gpu.softmax_crossentropy(losses, lg, dev(targets), V, dloss)
    cpu.softmax_crossentropy(want_losses, want, targets, V, dloss)
    np.testing.assert_allclose(host(losses), want_losses, rtol=1e-4, atol=1e-4)
    got = host(lg)
    assert_close(got, want, BF16_REL, "dlogits")
    at_target = lambda g: np.take_along_axis(g, targets[..., None], -1)  # noqa: E731
    np.testing.assert_allclose(at_target(got), at_target(want), rtol=BF16_REL)
    assert not got[..., V:].any()


def test_softmax_crossentropy_bad_target_gives_nan(rng):
    losses = cp.empty((1, 2), cp.float32)
    gpu.softmax_crossentropy(losses, dev(rand(rng, 1, 2, 128)), dev(np.array([[3, 120]], np.int32)), 100)
    got = host(losses)
    assert np.isfinite(got[0, 0]) and np.isnan(got[0, 1])


@pytest.mark.parametrize("n", [1, 100003, 3 << 20])
def test_global_norm_squared(rng, n):
    g = rand(rng, n)
    out = cp.empty(1, cp.float32)
    gpu.global_norm_squared(out, dev(g))
    np.testing.assert_allclose(host(out)[0], np.dot(g.astype(np.float64), g), rtol=1e-5)


ADAM = dict(hp=AdamW(lr=1e-3, weight_decay=0.1), grad_scale=0.5)


@pytest.mark.parametrize("n", [8, 1003, 40000])
def test_adamw_with_master_weights(rng, n):
    master0 = rng.standard_normal(n).astype(np.float32)
    grad, m0, v0 = rand(rng, n), rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    param, master, m, v = dev(master0), cp.asarray(master0), cp.asarray(m0), cp.asarray(v0)
    gpu.adamw_update(param, dev(grad), m, v, master, step=3, seed=5, **ADAM)
    want = [master0.copy(), m0.copy(), v0.copy()]
    cpu.adamw_update(want[0], grad, want[1], want[2], None, step=3, seed=5, **ADAM)
    for got, ref, what in zip((master, m, v), want, ("master", "m", "v")):
        np.testing.assert_allclose(host(got), ref, rtol=1e-5, atol=1e-7, err_msg=what)
    assert np.array_equal(host(param), host(master).astype(gpu.act_dtype).astype(np.float32))  # nearest


def test_adamw_decays_only_the_given_spans(rng):
    n = 40003  # span edges inside 8-element packs, and a tail
    decayed = ((0, 1001), (1003, 20000), (30001, n))
    master0, grad = rng.standard_normal(n).astype(np.float32), rand(rng, n)
    m0, v0 = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    param, master, m, v = dev(master0), cp.asarray(master0), cp.asarray(m0), cp.asarray(v0)
    gpu.adamw_update(param, dev(grad), m, v, master, step=3, seed=5, decayed=decayed, **ADAM)
    want = [master0.copy(), m0.copy(), v0.copy()]
    cpu.adamw_update(want[0], grad, want[1], want[2], None, step=3, seed=5, decayed=decayed, **ADAM)
    for got, ref, what in zip((master, m, v), want, ("master", "m", "v")):
        np.testing.assert_allclose(host(got), ref, rtol=1e-5, atol=1e-7, err_msg=what)


@pytest.mark.parametrize("norm_sq", [4.0, 0.25, np.nan])
def test_adamw_clips_by_the_device_norm_like_the_cpu(rng, norm_sq):
    n = 1003
    master0, grad = rng.standard_normal(n).astype(np.float32), rand(rng, n)
    m0, v0 = rng.standard_normal(n).astype(np.float32), rng.random(n).astype(np.float32)
    param, master, m, v = dev(master0), cp.asarray(master0), cp.asarray(m0), cp.asarray(v0)
    args = dict(ADAM, grad_scale=1.0)
    gpu.adamw_update(param, dev(grad), m, v, master, step=2, seed=1, norm_squared=cp.array([norm_sq], cp.float32),
                     **args)
    want = [master0.copy(), m0.copy(), v0.copy()]
    cpu.adamw_update(want[0], grad, want[1], want[2], None, step=2, seed=1,
                     norm_squared=np.array([norm_sq], np.float32), **args)
    for got, ref, what in zip((master, m, v), want, ("master", "m", "v")):
        np.testing.assert_allclose(host(got), ref, rtol=1e-5, atol=1e-7, err_msg=what)


def test_adamw_stochastic_rounding(rng):
    n = 1 << 17
    p0, grad = rand(rng, n), rand(rng, n)
    m0, v0 = np.zeros(n, np.float32), np.zeros(n, np.float32)

    def run(seed: int):
        param, m, v = dev(p0), cp.asarray(m0), cp.asarray(v0)
        gpu.adamw_update(param, dev(grad), m, v, None, step=1, seed=seed, **ADAM)
        return host(param)

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # reproducible from the seed alone
    want = p0.copy()
    cpu.adamw_update(want, grad, m0.copy(), v0.copy(), None, step=1, seed=7, **ADAM)
    # each result is one of the two bf16 neighbours of the exact value (allowing fp32 rounding)
    truncated = want.view(np.uint32) & np.uint32(0xFFFF0000)
    down, up = truncated.view(np.float32), (truncated + np.uint32(0x10000)).view(np.float32)
    assert (np.abs(a - want) <= 1.001 * np.abs(up - down)).all()
    assert (a != want.astype(gpu.act_dtype).astype(np.float32)).mean() > 0.2  # not round-to-nearest

    # a value halfway between two bf16 numbers rounds up half the time: 1 - 2^-9 lies halfway
    # between bf16's 1 - 2^-8 and 1 (betas 0.5 make the first Adam step exactly lr)
    ones = np.ones(n, np.float32)
    param, m, v = dev(ones), cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
    gpu.adamw_update(param, dev(ones), m, v, None, hp=AdamW(lr=2.0 ** -9, beta1=0.5, beta2=0.5, eps=0.0), step=1,
                     seed=3)
    got = host(param)
    assert set(np.unique(got).tolist()) <= {1.0, 1.0 - 2.0 ** -8}
    assert abs((got == 1.0).mean() - 0.5) < 0.01


def test_launcher_checks_raise_llmc_error(rng):
    with pytest.raises(LlmcError, match="bfloat16"):
        gpu.gelu_forward(cp.empty(8, cp.float32), cp.empty(8, cp.float32))
    with pytest.raises(LlmcError, match="16 channels"):
        gpu.matmul_forward(cp.empty((4, 12), gpu.act_dtype), cp.empty((4, 16), gpu.act_dtype),
                           cp.empty((12, 12), gpu.act_dtype), None)
    with pytest.raises(LlmcError, match="16-byte aligned"):
        gpu.global_norm_squared(cp.empty(1, cp.float32), cp.empty(9, gpu.act_dtype)[1:])
    x = cp.empty((4, 16), gpu.act_dtype)
    with pytest.raises(LlmcError, match="residual"):
        gpu.matmul_forward(x, x, cp.empty((16, 16), gpu.act_dtype), None, pre_gelu=x, residual=x)
    with pytest.raises(LlmcError, match="heads"):
        gpu.attention_forward(cp.empty((1, 4, 64), gpu.act_dtype), cp.empty((1, 3, 4), cp.float32),
                              cp.empty((1, 4, 192), gpu.act_dtype), 3)

"""Llama 3's primitives on the GPU (RMSNorm, RoPE, SwiGLU, grouped-query attention, the encoder without
wpe) against the CPU backend on the same bf16-exact inputs, at odd shapes and on views off 16-byte
alignment, and chained under CUDA-graph capture. Where the CPU backend does not have an op yet, an
independent NumPy reference with the op's signature stands in (`reference`)."""

import inspect
import math

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, cpu, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core.gpu import attention as gpu_attention, cudnn as gpu_cudnn  # noqa: E402

pytestmark = pytest.mark.gpu

BF16_REL = 1e-2
GRAD_REL = 2e-2
EPS = 1e-5


def at(x: np.ndarray, offset: int):
    """x on the GPU as bf16, a view `offset` elements into its own buffer (off 16-byte alignment for 1, 2)."""
    buf = cp.empty(x.size + offset, gpu.act_dtype)
    view = buf[offset:].reshape(x.shape)
    view[...] = dev(x)
    return view


# ----------------------------------------------------------------------------- NumPy references

def _rmsnorm_forward(out, rstd, inp, weight, eps):
    rstd[...] = 1.0 / np.sqrt((inp.astype(np.float64) ** 2).mean(-1) + eps)
    out[...] = inp * rstd[..., None] * weight


def _rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd):
    norm = inp * rstd[..., None]
    dnorm = dout * weight
    dweight += (norm * dout).reshape(-1, inp.shape[-1]).sum(0)
    dinp += rstd[..., None] * (dnorm - norm * (dnorm * norm).mean(-1, keepdims=True))


def _rope(x, freqs_cis, NH, NKV, sign):
    B, T, row = x.shape
    HS = row // (NH + 2 * NKV)
    out = x.copy()
    qk = x[..., :(NH + NKV) * HS].reshape(B, T, NH + NKV, HS // 2, 2)
    cos, sin = freqs_cis[:T, :, 0][None, :, None], sign * freqs_cis[:T, :, 1][None, :, None]
    x0, x1 = qk[..., 0], qk[..., 1]
    out[..., :(NH + NKV) * HS] = np.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(B, T, -1)
    return out


def _rope_forward(out, inp, freqs_cis, num_heads, num_kv_heads):
    out[...] = _rope(inp, freqs_cis, num_heads, num_kv_heads, 1.0)


def _rope_backward(dinp, dout, freqs_cis, num_heads, num_kv_heads):
    dinp[...] = _rope(dout, freqs_cis, num_heads, num_kv_heads, -1.0)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _swiglu_forward(out, inp):
    H = out.shape[-1]
    out[...] = inp[..., :H] * _silu(inp[..., H:])


def _swiglu_backward(dinp, inp, dout):
    H = dout.shape[-1]
    x1, x2 = inp[..., :H], inp[..., H:]
    sig = 1.0 / (1.0 + np.exp(-x2))
    dinp[..., :H] = dout * x2 * sig
    dinp[..., H:] = dout * x1 * sig * (1.0 + x2 * (1.0 - sig))


def _encoder_forward(out, inp, wte, wpe):
    out[...] = wte[inp] + (0.0 if wpe is None else wpe[:inp.shape[1]])


def _encoder_backward(dwte, dwpe, dout, inp):
    np.add.at(dwte, inp.ravel(), dout.reshape(-1, dout.shape[-1]))
    if dwpe is not None:
        dwpe[:inp.shape[1]] += dout.sum(0)


def _widen(qkv, NH, NKV):
    """GPT-2's layout with each key/value head repeated over its group."""
    B, T, row = qkv.shape
    HS = row // (NH + 2 * NKV)
    q, k, v = np.split(qkv, [NH * HS, (NH + NKV) * HS], -1)
    rep = [np.repeat(a.reshape(B, T, NKV, HS), NH // NKV, axis=2).reshape(B, T, NH * HS) for a in (k, v)]
    return np.concatenate([q] + rep, -1)


def _attention_forward(out, stats, qkv, num_heads, num_kv_heads=None):
    cpu.attention_forward(out, stats, _widen(qkv, num_heads, num_kv_heads or num_heads), num_heads)


def _attention_backward(dqkv, dout, qkv, out, stats, num_heads, num_kv_heads=None):
    NH, NKV = num_heads, num_kv_heads or num_heads
    B, T, row = qkv.shape
    HS = row // (NH + 2 * NKV)
    dwide = np.empty((B, T, 3 * NH * HS), np.float32)
    cpu.attention_backward(dwide, dout, _widen(qkv, NH, NKV), out, stats, NH)
    dq, dk, dv = np.split(dwide, 3, -1)
    group = [d.reshape(B, T, NKV, NH // NKV, HS).sum(3).reshape(B, T, NKV * HS) for d in (dk, dv)]
    dqkv[...] = np.concatenate([dq] + group, -1)


def reference(op: str):
    """The CPU backend's op where it has Llama's (attention with num_kv_heads, the encoder without wpe once
    the rest is there), else the NumPy stand-in above."""
    llama = hasattr(cpu, "rmsnorm_forward") and "num_kv_heads" in inspect.signature(cpu.attention_forward).parameters
    if hasattr(cpu, op) and (llama or not op.startswith(("attention", "encoder"))):
        return getattr(cpu, op)
    return globals()[f"_{op}"]


def freqs(maxT: int, HS: int, theta: float = 500000.0) -> np.ndarray:
    """Llama 3's RoPE table (with its long-context scaling), (maxT, HS/2, 2) fp32."""
    f = 1.0 / theta ** (np.arange(0, HS, 2, dtype=np.float64) / HS)
    wavelen = 2 * math.pi / f
    smooth = (8192 / wavelen - 1) / (4 - 1)
    f = np.where(wavelen < 8192 / 4, f, np.where(wavelen > 8192, f / 8, (1 - smooth) * f / 8 + smooth * f))
    angle = np.arange(maxT)[:, None] * f[None]
    return np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float32)


# ----------------------------------------------------------------------------- each op

@pytest.mark.parametrize("C", [20, 27, 768, 1030, 2056])  # 1030 (2-wide packs), 2056: channels past those held in registers
@pytest.mark.parametrize("offset", [0, 1])
def test_rmsnorm(rng, C, offset):
    B, T = 3, 19
    x, dout = rand(rng, B, T, C, scale=2.0), rand(rng, B, T, C)
    w = rand(rng, C) + 1.0
    w = w.astype(gpu.act_dtype).astype(np.float32)
    out, rstd = at(np.zeros((B, T, C), np.float32), offset), cp.empty((B, T), cp.float32)
    gpu.rmsnorm_forward(out, rstd, at(x, offset), at(w, offset), EPS)
    want, wrstd = np.empty((B, T, C), np.float32), np.empty((B, T), np.float32)
    reference("rmsnorm_forward")(want, wrstd, x, w, EPS)
    assert_close(host(out), want, BF16_REL, "rmsnorm out")
    np.testing.assert_allclose(host(rstd), wrstd, rtol=1e-4)

    dinp0, dw0 = rand(rng, B, T, C), rand(rng, C)
    dinp, dw = at(dinp0, offset), at(dw0, offset)
    gpu.rmsnorm_backward(dinp, dw, at(dout, offset), at(x, offset), at(w, offset), cp.asarray(wrstd))
    ref_dinp, ref_dw = dinp0.copy(), dw0.copy()
    reference("rmsnorm_backward")(ref_dinp, ref_dw, dout, x, w, wrstd)
    assert_close(host(dinp) - dinp0, ref_dinp - dinp0, GRAD_REL, "rmsnorm dinp")
    assert_close(host(dw) - dw0, ref_dw - dw0, GRAD_REL, "rmsnorm dweight")


@pytest.mark.parametrize("NH,NKV,HS", [(4, 4, 16), (4, 2, 64), (8, 2, 128), (6, 3, 18), (2, 1, 6)])
@pytest.mark.parametrize("offset", [0, 1])
def test_rope(rng, NH, NKV, HS, offset):
    B, T, maxT = 2, 37, 50
    row = (NH + 2 * NKV) * HS
    x, dout, f = rand(rng, B, T, row), rand(rng, B, T, row), freqs(maxT, HS)
    out = at(np.zeros((B, T, row), np.float32), offset)
    gpu.rope_forward(out, at(x, offset), cp.asarray(f), NH, NKV)
    want = np.empty_like(x)
    reference("rope_forward")(want, x, f, NH, NKV)
    assert_close(host(out), want, BF16_REL, "rope out")
    assert np.array_equal(host(out)[..., (NH + NKV) * HS:], x[..., (NH + NKV) * HS:]), "values are copied"

    reference("rope_backward")(want, dout, f, NH, NKV)
    dinp = at(np.zeros((B, T, row), np.float32), offset)
    gpu.rope_backward(dinp, at(dout, offset), cp.asarray(f), NH, NKV)
    assert_close(host(dinp), want, BF16_REL, "rope dinp")
    inplace = at(dout, offset)  # as llm.c calls it: dinp is dout
    gpu.rope_backward(inplace, inplace, cp.asarray(f), NH, NKV)
    assert np.array_equal(host(inplace), host(dinp))


@pytest.mark.parametrize("H", [64, 27, 1030])
@pytest.mark.parametrize("offset", [0, 1])
def test_swiglu(rng, H, offset):
    B, T = 3, 19
    x, dout = rand(rng, B, T, 2 * H, scale=2.0), rand(rng, B, T, H)
    out = at(np.zeros((B, T, H), np.float32), offset)
    gpu.swiglu_forward(out, at(x, offset))
    want = np.empty((B, T, H), np.float32)
    reference("swiglu_forward")(want, x)
    assert_close(host(out), want, BF16_REL, "swiglu out")
    dinp = at(np.full((B, T, 2 * H), 3.0, np.float32), offset)
    gpu.swiglu_backward(dinp, at(x, offset), at(dout, offset))
    want = np.empty_like(x)
    reference("swiglu_backward")(want, x, dout)
    assert_close(host(dinp), want, BF16_REL, "swiglu dinp")


@pytest.mark.parametrize("C,offset", [(64, 0), (27, 1)])
def test_encoder_without_wpe(rng, C, offset):
    B, T, Vp = 3, 19, 130
    inp = rng.integers(0, Vp, (B, T)).astype(np.int32)
    inp[1, 3:8] = 5
    wte, dout, dwte0 = rand(rng, Vp, C), rand(rng, B, T, C), rand(rng, Vp, C)
    out = at(np.zeros((B, T, C), np.float32), offset)
    gpu.encoder_forward(out, dev(inp), at(wte, offset), None)
    want = np.empty((B, T, C), np.float32)
    reference("encoder_forward")(want, inp, wte, None)
    assert np.array_equal(host(out), want)  # a gather: exact
    dwte = at(dwte0, offset)
    gpu.encoder_backward(dwte, None, at(dout, offset), dev(inp))
    ref = dwte0.copy()
    reference("encoder_backward")(ref, None, dout, inp)
    assert_close(host(dwte) - dwte0, ref - dwte0, GRAD_REL, "dwte")


# GQA ratios 1, 2 and 4 at head sizes 16 to 128 (cuDNN's), 18 and 6 (the fallback's), one off alignment
@pytest.mark.parametrize("backend", ["cudnn", "fallback"])
@pytest.mark.parametrize("B,T,NH,NKV,HS,offset", [(2, 37, 4, 4, 16, 0), (2, 64, 4, 2, 64, 0), (3, 19, 8, 2, 128, 0),
                                                  (2, 33, 4, 1, 32, 0), (3, 19, 6, 3, 18, 0), (2, 37, 4, 1, 6, 1),
                                                  (2, 19, 4, 2, 16, 1)])
def test_grouped_query_attention(rng, monkeypatch, backend, B, T, NH, NKV, HS, offset):
    if backend == "cudnn" and gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
    C, row = NH * HS, (NH + 2 * NKV) * HS
    qkv, dout = rand(rng, B, T, row), rand(rng, B, T, C)
    out, stats = at(np.zeros((B, T, C), np.float32), offset), cp.empty((B, NH, T), cp.float32)
    gpu.attention_forward(out, stats, at(qkv, offset), NH, NKV)
    want, probs = np.empty((B, T, C), np.float32), np.empty(cpu.attention_stats_shape(B, T, NH), np.float32)
    reference("attention_forward")(want, probs, qkv, NH, NKV)
    assert_close(host(out), want, BF16_REL, "attention out")
    dqkv = at(np.full((B, T, row), 5, np.float32), offset)
    gpu.attention_backward(dqkv, at(dout, offset), at(qkv, offset), out, stats, NH, NKV)
    want_dqkv = np.empty_like(qkv)
    reference("attention_backward")(want_dqkv, dout, qkv, want, probs, NH, NKV)
    got = host(dqkv)
    for what, sl in (("dq", slice(0, C)), ("dk", slice(C, C + NKV * HS)), ("dv", slice(C + NKV * HS, row))):
        assert_close(got[..., sl], want_dqkv[..., sl], GRAD_REL, what)


def test_cudnn_takes_grouped_query_attention(rng, monkeypatch):
    """cuDNN's SDPA runs GQA itself (k and v views of NKV heads), forward and backward: no fallback."""
    if gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    fallback = []
    monkeypatch.setattr(gpu_attention, "_fallback_forward", lambda *a: fallback.append(a))
    monkeypatch.setattr(gpu_attention, "_fallback_backward", lambda *a: fallback.append(a))
    B, T, NH, NKV, HS = 2, 64, 8, 2, 64
    qkv, dout = dev(rand(rng, B, T, (NH + 2 * NKV) * HS)), dev(rand(rng, B, T, NH * HS))
    out, stats = cp.empty((B, T, NH * HS), gpu.act_dtype), cp.empty((B, NH, T), cp.float32)
    gpu.attention_forward(out, stats, qkv, NH, NKV)
    gpu.attention_backward(cp.empty_like(qkv), dout, qkv, out, stats, NH, NKV)
    assert not fallback


@pytest.mark.parametrize("backend", ["cudnn", "fallback"])
def test_gpt2_attention_is_the_ungrouped_case(rng, monkeypatch, backend):
    """num_kv_heads == NH is GPT-2's attention: the same results as None, bit for bit."""
    if backend == "cudnn" and gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
    B, T, NH, HS = 2, 40, 4, 32
    qkv, dout = dev(rand(rng, B, T, 3 * NH * HS)), dev(rand(rng, B, T, NH * HS))
    results = []
    for kv in (None, NH):
        out, stats, dqkv = cp.empty((B, T, NH * HS), gpu.act_dtype), cp.empty((B, NH, T), cp.float32), \
            cp.empty_like(qkv)
        gpu.attention_forward(out, stats, qkv, NH, kv)
        gpu.attention_backward(dqkv, dout, qkv, out, stats, NH, kv)
        results.append([host(a) for a in (out, stats, dqkv)])
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_llama_ops_check_shapes():
    x = cp.zeros((2, 3, 40), gpu.act_dtype)
    with pytest.raises(Exception, match="heads"):
        gpu.rope_forward(cp.empty_like(x), x, cp.zeros((3, 2, 2), cp.float32), 3, 2)  # 40 is not 7 heads
    with pytest.raises(Exception, match="freqs_cis"):
        gpu.rope_forward(cp.empty_like(x), x, cp.zeros((2, 2, 2), cp.float32), 6, 2)  # T=3 > maxT=2
    with pytest.raises(Exception, match="twice"):
        gpu.swiglu_forward(cp.zeros((2, 3, 21), gpu.act_dtype), x)
    with pytest.raises(Exception, match="multiple"):
        gpu.attention_forward(cp.zeros((2, 3, 24), gpu.act_dtype), cp.zeros((2, 3, 3), cp.float32), x, 3, 2)


# ----------------------------------------------------------------------------- under graph capture

@pytest.mark.parametrize("backend", ["cudnn", "fallback"])
@pytest.mark.parametrize("C,NH,NKV,Vp", [(128, 4, 2, 256), (36, 6, 3, 130)])  # 36: head size 6, 4-wide packs
def test_llama_chain_under_graph_capture(rng, monkeypatch, backend, C, NH, NKV, Vp):
    """encoder (no wpe) -> rmsnorm -> qkv matmul -> rope -> GQA attention -> fc matmul -> swiglu, and back:
    replays of the captured graph compute what eager calls compute, on each call's new tokens."""
    if backend == "cudnn" and gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
    B, T, H, bf = 2, 29, 2 * C, gpu.act_dtype
    HS = C // NH
    row = (NH + 2 * NKV) * HS
    w = {name: dev(rand(rng, *shape, scale=0.2)) for name, shape in
         (("wte", (Vp, C)), ("ln", (C,)), ("qkvw", (row, C)), ("fcw", (2 * H, C)))}
    f = cp.asarray(freqs(T + 3, HS))
    tokens = cp.empty((B, T), cp.int32)
    x, ln, rstd = cp.empty((B, T, C), bf), cp.empty((B, T, C), bf), cp.empty((B, T), cp.float32)
    qkv, qkvr, att, stats = (cp.empty((B, T, row), bf), cp.empty((B, T, row), bf), cp.empty((B, T, C), bf),
                             cp.empty((B, NH, T), cp.float32))
    fc, act, dact = cp.empty((B, T, 2 * H), bf), cp.empty((B, T, H), bf), dev(rand(rng, B, T, H))
    dfc, datt, dqkv, dln, dx = (cp.empty_like(a) for a in (fc, att, qkv, ln, x))
    g = {name: cp.empty_like(a) for name, a in w.items()}

    def step() -> None:
        for a in (*g.values(), dx):
            a.fill(0)
        gpu.encoder_forward(x, tokens, w["wte"], None)
        gpu.rmsnorm_forward(ln, rstd, x, w["ln"], EPS)
        gpu.matmul_forward(qkv, ln, w["qkvw"], None)
        gpu.rope_forward(qkvr, qkv, f, NH, NKV)
        gpu.attention_forward(att, stats, qkvr, NH, NKV)
        gpu.matmul_forward(fc, att, w["fcw"], None)
        gpu.swiglu_forward(act, fc)
        gpu.swiglu_backward(dfc, fc, dact)
        gpu.matmul_backward(datt, g["fcw"], None, dfc, att, w["fcw"])
        gpu.attention_backward(dqkv, datt, qkvr, att, stats, NH, NKV)
        gpu.rope_backward(dqkv, dqkv, f, NH, NKV)
        gpu.matmul_backward(dln, g["qkvw"], None, dqkv, ln, w["qkvw"])
        gpu.rmsnorm_backward(dx, g["ln"], dln, x, w["ln"], rstd)
        gpu.encoder_backward(g["wte"], None, dx, tokens)

    outputs = (act, dx, *g.values())
    batches = [rng.integers(0, Vp, (B, T)).astype(np.int32) for _ in range(4)]
    eager = []
    for batch in batches:
        tokens[...] = cp.asarray(batch)
        step()
        eager.append([host(o) for o in outputs])
    replay = gpu.graph(step)
    for i, batch in enumerate(batches):  # call 1 eager, call 2 captures and launches, then replays
        tokens[...] = cp.asarray(batch)
        replay()
        for got, want, what in zip((host(o) for o in outputs), eager[i], ("act", "dx", *g)):
            assert_close(got, want, 1e-3, f"call {i + 1}: {what}")
    assert not np.allclose(eager[2][0], eager[3][0])  # the tokens did change the outputs

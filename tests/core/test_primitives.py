"""The NumPy backend against torch autograd, primitive by primitive, and against the declared interface.

References run in float64 so the tolerances measure llmc's fp32 error alone. Every gradient buffer
starts filled with garbage: accumulating ones (parameter grads, layernorm's dinp) must end at
garbage + gradient, overwriting ones at the gradient alone.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from llmc.core import cpu  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.primitives import AdamW  # noqa: E402
from llmc.tests.core.interface import check_backend_interface  # noqa: E402

# (B, T, C, NH): T never a power of two, head counts 1, 3, 4
SHAPES = [(2, 7, 12, 3), (1, 5, 8, 1), (3, 13, 16, 4)]
# (V, Vp): V not a multiple of 128
VOCABS = [(37, 128), (200, 256)]
F32 = dict(rtol=1e-5, atol=1e-6)


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def close(got: np.ndarray, want, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_cpu_backend_implements_the_primitive_interface():
    check_backend_interface(cpu)
    assert cpu.name == "cpu" and cpu.xp is np and cpu.act_dtype == np.float32


def test_interface_check_catches_a_wrong_signature():
    import types

    fake = types.ModuleType("fake_backend")
    for attr in ("name", "xp", "act_dtype"):
        setattr(fake, attr, getattr(cpu, attr))
    for op in cpu.__all__:
        setattr(fake, op, getattr(cpu, op))
    fake.gelu_backward = lambda dinp, dout, inp: None  # inputs swapped
    with pytest.raises(AssertionError, match="gelu_backward"):
        check_backend_interface(fake)
    del fake.adamw_update
    with pytest.raises(AssertionError, match="missing op adamw_update"):
        check_backend_interface(fake)


def test_device_helpers():
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    dev = cpu.to_device(host, np.float32)
    assert dev.dtype == np.float32 and dev.shape == (2, 3)
    assert cpu.to_device(host).dtype == np.float64
    dev[0, 0] = 99.0  # a copy, not a view
    assert host[0, 0] == 0.0
    out = cpu.to_host(dev)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    dev[0, 1] = 7.0  # a copy too, as the GPU's: what the model writes later does not reach it
    assert out[0, 1] == 1.0
    assert cpu.to_host(np.arange(3, dtype=np.int32)).dtype == np.int32
    cpu.synchronize()
    calls = []
    run = cpu.graph(lambda: calls.append(1))
    run()
    run()
    assert calls == [1, 1]
    assert cpu.attention_stats_shape(2, 5, 3) == (2, 3, 5, 5)


# ----------------------------------------------------------------------------- encoder

@pytest.mark.parametrize("B,T,C,NH", SHAPES)
def test_encoder(B, T, C, NH):
    rng = np.random.default_rng(1)
    V, maxT = 37, T + 3
    wte, wpe = rand(rng, V, C), rand(rng, maxT, C)
    inp = rng.integers(0, V, size=(B, T), dtype=np.int32)
    inp[0, :2] = 5  # repeated tokens: their gradients must add up, not overwrite
    out = np.full((B, T, C), np.nan, dtype=np.float32)
    cpu.encoder_forward(out, inp, wte, wpe)
    wte_t, wpe_t = t64(wte, True), t64(wpe, True)
    ref = wte_t[torch.from_numpy(inp.astype(np.int64))] + wpe_t[:T]
    close(out, ref)

    dout = rand(rng, B, T, C)
    ref.backward(t64(dout))
    dwte0, dwpe0 = rand(rng, V, C), rand(rng, maxT, C)
    dwte, dwpe = dwte0.copy(), dwpe0.copy()
    cpu.encoder_backward(dwte, dwpe, dout, inp)
    close(dwte, dwte0 + wte_t.grad.numpy())
    close(dwpe, dwpe0 + wpe_t.grad.numpy())
    np.testing.assert_array_equal(dwpe[T:], dwpe0[T:])  # positions beyond T untouched


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
def test_encoder_without_position_embedding(B, T, C, NH):
    """Llama's encoder: wpe and dwpe None, out = wte[inp] alone."""
    rng = np.random.default_rng(14)
    V = 37
    wte = rand(rng, V, C)
    inp = rng.integers(0, V, size=(B, T), dtype=np.int32)
    inp[0, :2] = 5
    out = np.full((B, T, C), np.nan, dtype=np.float32)
    cpu.encoder_forward(out, inp, wte, None)
    np.testing.assert_array_equal(out, wte[inp])
    dout = rand(rng, B, T, C)
    dwte0 = rand(rng, V, C)
    dwte = dwte0.copy()
    cpu.encoder_backward(dwte, None, dout, inp)
    want = dwte0.astype(np.float64)
    np.add.at(want, inp.reshape(-1), dout.reshape(-1, C))
    close(dwte, want)


# ----------------------------------------------------------------------------- layernorm, residual

def torch_layernorm(x, w, b):
    mean = x.mean(-1)
    rstd = 1.0 / torch.sqrt(x.var(-1, unbiased=False) + 1e-5)
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5), mean, rstd


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.01])  # at 0.01 the variance is 1e-4, so eps 1e-5 shows
def test_layernorm(B, T, C, NH, scale):
    rng = np.random.default_rng(2)
    inp = rand(rng, B, T, C, scale=scale) + np.float32(3 * scale)  # non-zero mean
    w, b = rand(rng, C) + 1, rand(rng, C)
    out, mean, rstd = (np.full(s, np.nan, dtype=np.float32) for s in ((B, T, C), (B, T), (B, T)))
    cpu.layernorm_forward(out, mean, rstd, inp, w, b)
    x_t, w_t, b_t = t64(inp, True), t64(w, True), t64(b, True)
    ref, ref_mean, ref_rstd = torch_layernorm(x_t, w_t, b_t)
    close(out, ref, atol=1e-5)
    close(mean, ref_mean, atol=1e-6 * scale)
    close(rstd, ref_rstd, rtol=1e-5)

    dout = rand(rng, B, T, C)
    ref.backward(t64(dout))
    dinp0, dw0, db0 = rand(rng, B, T, C), rand(rng, C), rand(rng, C)
    dinp, dw, db = dinp0.copy(), dw0.copy(), db0.copy()
    cpu.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd)
    # dinp scales with rstd = 1/scale
    close(dinp, dinp0 + x_t.grad.numpy(), rtol=1e-4, atol=1e-4 / scale)
    close(dw, dw0 + w_t.grad.numpy(), rtol=1e-4, atol=1e-4)
    close(db, db0 + b_t.grad.numpy())

    # dproj_bias: the column sums of the updated dinp (the residual stream's gradient)
    dproj0 = rand(rng, C)
    dinp, dproj = dinp0.copy(), dproj0.copy()
    cpu.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, dproj_bias=dproj)
    close(dproj, dproj0 + (dinp0 + x_t.grad.numpy()).sum(axis=(0, 1)), rtol=1e-4, atol=1e-4 / scale)


def torch_rmsnorm(x, w, eps):
    """train_llama3.py's RMSNorm."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
@pytest.mark.parametrize("scale,eps", [(1.0, 1e-5), (0.01, 1e-5), (1.0, 1e-6)])  # at 0.01 eps 1e-5 shows
def test_rmsnorm(B, T, C, NH, scale, eps):
    rng = np.random.default_rng(15)
    inp = rand(rng, B, T, C, scale=scale) + np.float32(scale)  # non-zero mean: not a layernorm
    w = rand(rng, C) + 1
    out, rstd = np.full((B, T, C), np.nan, dtype=np.float32), np.full((B, T), np.nan, dtype=np.float32)
    cpu.rmsnorm_forward(out, rstd, inp, w, eps)
    x_t, w_t = t64(inp, True), t64(w, True)
    ref = torch_rmsnorm(x_t, w_t, eps)
    close(out, ref, atol=1e-5)
    close(rstd, torch.rsqrt(x_t.pow(2).mean(-1) + eps), rtol=1e-5)

    dout = rand(rng, B, T, C)
    ref.backward(t64(dout))
    dinp0, dw0 = rand(rng, B, T, C), rand(rng, C)  # both accumulate
    dinp, dw = dinp0.copy(), dw0.copy()
    cpu.rmsnorm_backward(dinp, dw, dout, inp, w, rstd)
    close(dinp, dinp0 + x_t.grad.numpy(), rtol=1e-4, atol=1e-4 / scale)  # dinp scales with rstd ~ 1/scale
    close(dw, dw0 + w_t.grad.numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- rope

# (B, T, NH, NKV, HS): GQA ratios NH/NKV 1, 2, 4; head sizes 16 to 128 (48 not a power of two); T odd
GQA_SHAPES = [(2, 7, 4, 4, 16), (1, 13, 4, 2, 32), (2, 5, 8, 2, 64), (1, 9, 4, 1, 128), (2, 11, 6, 3, 48)]


def torch_rope(qkv, freqs_cis, NH, NKV):
    """train_llama3.py's apply_rotary_emb on the query and key heads of qkv (B, T, (NH+2*NKV)*HS), in
    complex128: each channel pair is a complex number, multiplied by freqs_cis[t, i] = cos + i sin."""
    B, T, QKV = qkv.shape
    HS = QKV // (NH + 2 * NKV)
    q, k, v = qkv.split([NH * HS, NKV * HS, NKV * HS], dim=-1)
    f = torch.view_as_complex(torch.tensor(freqs_cis[:T], dtype=torch.float64))[None, :, None, :]  # (1, T, 1, HS/2)
    turn = lambda x, h: torch.view_as_real(torch.view_as_complex(x.reshape(B, T, h, HS // 2, 2)) * f)  # noqa: E731
    return torch.cat([turn(q, NH).reshape(B, T, -1), turn(k, NKV).reshape(B, T, -1), v], dim=-1)


@pytest.mark.parametrize("B,T,NH,NKV,HS", GQA_SHAPES)
@pytest.mark.parametrize("use_scaled", [True, False])
def test_rope(B, T, NH, NKV, HS, use_scaled):
    from llmc.core.llama import rope_table

    rng = np.random.default_rng(16)
    QKV = (NH + 2 * NKV) * HS
    # theta 10000 and positions from 8000 on turn the low frequencies far enough for the scaling to show
    table = rope_table(HS, 8000 + T, 10000.0, use_scaled)[8000:]  # positions 8000.. as 0..T-1
    assert table.shape == (T, HS // 2, 2) and table.dtype == np.float32
    inp = rand(rng, B, T, QKV)
    out = np.full_like(inp, np.nan)
    cpu.rope_forward(out, inp, table, NH, NKV)
    inp_t = t64(inp, True)
    ref = torch_rope(inp_t, table, NH, NKV)
    close(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[..., (NH + NKV) * HS:], inp[..., (NH + NKV) * HS:])  # v copied

    dout = rand(rng, B, T, QKV)
    ref.backward(t64(dout))
    dinp = rand(rng, B, T, QKV)  # garbage: overwritten
    cpu.rope_backward(dinp, dout, table, NH, NKV)
    close(dinp, inp_t.grad, atol=1e-5)
    inplace = dout.copy()  # dinp may be dout itself, as llm.c's rope_backward_inplace
    cpu.rope_backward(inplace, inplace, table, NH, NKV)
    np.testing.assert_array_equal(inplace, dinp)


# ----------------------------------------------------------------------------- matmul, gelu

def torch_gelu(x):
    return F.gelu(x, approximate="tanh")


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul(B, T, C, NH, with_bias):
    rng = np.random.default_rng(4)
    OC = 3 * C + 1
    inp, w = rand(rng, B, T, C), rand(rng, OC, C)
    bias = rand(rng, OC) if with_bias else None
    out = np.full((B, T, OC), np.nan, dtype=np.float32)
    cpu.matmul_forward(out, inp, w, bias)
    x_t, w_t = t64(inp, True), t64(w, True)
    b_t = t64(bias, True) if with_bias else None
    ref = F.linear(x_t, w_t, b_t)
    close(out, ref, atol=1e-5)
    residual = rand(rng, B, T, OC)
    cpu.matmul_forward(out, inp, w, bias, residual=residual)
    close(out, ref + t64(residual), atol=1e-5)

    dout = rand(rng, B, T, OC)
    ref.backward(t64(dout))
    dinp = rand(rng, B, T, C)  # garbage: dinp is overwritten
    dw0 = rand(rng, OC, C)
    dw = dw0.copy()
    db0 = rand(rng, OC) if with_bias else None
    db = db0.copy() if with_bias else None
    cpu.matmul_backward(dinp, dw, db, dout, inp, w)
    close(dinp, x_t.grad, atol=1e-5)
    close(dw, dw0 + w_t.grad.numpy(), atol=1e-5)
    if with_bias:
        close(db, db0 + b_t.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
def test_matmul_fused_gelu(B, T, C, NH):
    """forward: pre_gelu = inp @ w.T + b, out = gelu(pre_gelu). backward (inp was gelu(pre_gelu)):
    dinp = (dout @ w) * gelu'(pre_gelu), the gradient with respect to pre_gelu."""
    rng = np.random.default_rng(5)
    OC = 4 * C
    inp, w, b = rand(rng, B, T, C), rand(rng, OC, C, scale=0.5), rand(rng, OC)
    out, pre = (np.full((B, T, OC), np.nan, dtype=np.float32) for _ in range(2))
    cpu.matmul_forward(out, inp, w, b, pre_gelu=pre)
    ref_pre = F.linear(t64(inp), t64(w), t64(b))
    close(pre, ref_pre, atol=1e-5)
    close(out, torch_gelu(ref_pre), atol=1e-5)

    # backward of a projection (C <- OC) whose input is gelu(pre)
    w2, b2 = rand(rng, C, OC), rand(rng, C)
    pre_t, w2_t, b2_t = t64(pre, True), t64(w2, True), t64(b2, True)
    y = F.linear(torch_gelu(pre_t), w2_t, b2_t)
    dout = rand(rng, B, T, C)
    y.backward(t64(dout))
    gelu_out = np.empty_like(pre)
    cpu.gelu_forward(gelu_out, pre)
    dinp = rand(rng, B, T, OC)
    dw2, db2 = np.zeros_like(w2), np.zeros_like(b2)
    cpu.matmul_backward(dinp, dw2, db2, dout, gelu_out, w2, pre_gelu=pre)
    close(dinp, pre_t.grad, atol=1e-5)
    close(dw2, w2_t.grad, atol=1e-5)
    close(db2, b2_t.grad, atol=1e-5)
    with pytest.raises(LlmcError, match="residual"):
        cpu.matmul_forward(out, inp, w, b, pre_gelu=pre, residual=out)


def test_gelu_is_the_tanh_approximation():
    x = np.linspace(-6, 6, 1001, dtype=np.float32).reshape(7, 11, 13)
    out = np.empty_like(x)
    cpu.gelu_forward(out, x)
    x_t = t64(x, True)
    ref = torch_gelu(x_t)
    close(out, ref, atol=1e-6)
    assert np.abs(out - F.gelu(t64(x)).numpy()).max() > 1e-4  # distinguishable from the erf GELU

    dout = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    ref.backward(t64(dout))
    dinp = np.full_like(x, np.nan)
    cpu.gelu_backward(dinp, x, dout)
    close(dinp, x_t.grad, atol=1e-5)  # gelu' = O(1); fp32 cancellation near x = -6 costs ~2e-6
    inplace = dout.copy()  # dinp may be dout itself
    cpu.gelu_backward(inplace, x, inplace)
    np.testing.assert_array_equal(inplace, dinp)


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 10.0])  # at 10 the gate reaches exp's overflow (x2 < -88)
def test_swiglu(B, T, C, NH, scale):
    """out = x1 * silu(x2) of inp = [x1 | x2] (train_llama3.py's c_fc(x) * silu(c_fc2(x)), fused as llm.c)."""
    rng = np.random.default_rng(17)
    H = 2 * C + 1
    inp = rand(rng, B, T, 2 * H, scale=scale)
    out = np.full((B, T, H), np.nan, dtype=np.float32)
    cpu.swiglu_forward(out, inp)
    inp_t = t64(inp, True)
    ref = inp_t[..., :H] * F.silu(inp_t[..., H:])
    close(out, ref, rtol=1e-5, atol=1e-5)

    dout = rand(rng, B, T, H)
    ref.backward(t64(dout))
    dinp = rand(rng, B, T, 2 * H)  # garbage: overwritten
    cpu.swiglu_backward(dinp, inp, dout)
    close(dinp, inp_t.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- attention

def torch_attention(qkv, B, T, C, NH):
    HS = C // NH
    q, k, v = qkv.view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)  # each (B, NH, T, HS)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, T, C), att


@pytest.mark.parametrize("B,T,C,NH", SHAPES)
def test_attention(B, T, C, NH):
    rng = np.random.default_rng(7)
    qkv = rand(rng, B, T, 3 * C)
    out = np.full((B, T, C), np.nan, dtype=np.float32)
    stats = np.full(cpu.attention_stats_shape(B, T, NH), np.nan, dtype=np.float32)
    cpu.attention_forward(out, stats, qkv, NH)
    qkv_t = t64(qkv, True)
    ref, att = torch_attention(qkv_t, B, T, C, NH)
    close(out, ref, atol=1e-5)
    close(stats, att, atol=1e-6)  # the CPU keeps the probabilities

    dout = rand(rng, B, T, C)
    ref.backward(t64(dout))
    dqkv = rand(rng, B, T, 3 * C)  # garbage: overwritten
    cpu.attention_backward(dqkv, dout, qkv, out, stats, NH)
    close(dqkv, qkv_t.grad, atol=1e-5)


def torch_gqa_attention(qkv, B, T, NH, NKV):
    """train_llama3.py's CausalSelfAttention after the projection: repeat_kv, then causal softmax attention."""
    HS = qkv.shape[-1] // (NH + 2 * NKV)
    q, k, v = qkv.split([NH * HS, NKV * HS, NKV * HS], dim=-1)
    q, k, v = (x.view(B, T, -1, HS) for x in (q, k, v))
    k, v = (x.repeat_interleave(NH // NKV, dim=2) for x in (k, v))  # repeat_kv
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, NH, T, HS)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, T, NH * HS), att


@pytest.mark.parametrize("B,T,NH,NKV,HS", GQA_SHAPES)
def test_grouped_query_attention(B, T, NH, NKV, HS):
    rng = np.random.default_rng(18)
    qkv = rand(rng, B, T, (NH + 2 * NKV) * HS)
    out = np.full((B, T, NH * HS), np.nan, dtype=np.float32)
    stats = np.full(cpu.attention_stats_shape(B, T, NH), np.nan, dtype=np.float32)
    cpu.attention_forward(out, stats, qkv, NH, NKV)
    qkv_t = t64(qkv, True)
    ref, att = torch_gqa_attention(qkv_t, B, T, NH, NKV)
    close(out, ref, atol=1e-5)
    close(stats, att, atol=1e-6)

    dout = rand(rng, B, T, NH * HS)
    ref.backward(t64(dout))
    dqkv = rand(rng, B, T, (NH + 2 * NKV) * HS)  # garbage: overwritten
    cpu.attention_backward(dqkv, dout, qkv, out, stats, NH, NKV)
    close(dqkv, qkv_t.grad, atol=1e-5)
    if NKV == NH:  # num_kv_heads = NH is GPT-2's default path, to the bit
        out2, stats2, dqkv2 = np.empty_like(out), np.empty_like(stats), np.empty_like(dqkv)
        cpu.attention_forward(out2, stats2, qkv, NH)
        cpu.attention_backward(dqkv2, dout, qkv, out2, stats2, NH)
        for a, b in ((out, out2), (stats, stats2), (dqkv, dqkv2)):
            np.testing.assert_array_equal(a, b)


def test_attention_rejects_channels_not_divisible_by_heads():
    qkv = np.zeros((1, 3, 3 * 10), dtype=np.float32)
    out, stats = np.zeros((1, 3, 10), np.float32), np.zeros((1, 3, 3, 3), np.float32)
    with pytest.raises(LlmcError, match="not divisible"):
        cpu.attention_forward(out, stats, qkv, 3)
    qkv = np.zeros((1, 3, 4 * 8), dtype=np.float32)  # 2 query, 1 key and 1 value heads of 8 channels
    with pytest.raises(LlmcError, match="32 qkv channels not divisible by 5 heads"):
        cpu.attention_forward(out, stats, qkv, 3, 1)
    with pytest.raises(LlmcError, match="3 query heads not divisible by 2 key/value heads"):
        cpu.attention_forward(out, stats, qkv, 3, 2)


# ----------------------------------------------------------------------------- classifier

@pytest.mark.parametrize("B,T,C,NH", SHAPES)
@pytest.mark.parametrize("V,Vp", VOCABS)
def test_softmax_crossentropy(B, T, C, NH, V, Vp):
    rng = np.random.default_rng(8)
    logits = rand(rng, B, T, Vp, scale=3.0)
    logits[..., V:] = 50.0  # the padded columns must never reach the softmax
    targets = rng.integers(0, V, size=(B, T), dtype=np.int32)
    lg_t = t64(logits[..., :V], True)
    ref = F.cross_entropy(lg_t.reshape(-1, V), torch.from_numpy(targets.reshape(-1).astype(np.int64)),
                          reduction="none").reshape(B, T)

    # without dloss: losses only, logits untouched
    before = logits.copy()
    losses = np.full((B, T), np.nan, dtype=np.float32)
    cpu.softmax_crossentropy(losses, logits, targets, V)
    close(losses, ref, atol=1e-5)
    np.testing.assert_array_equal(logits, before)

    # with dloss: logits become dlogits of dloss * sum(losses), padded columns zero
    dloss = 1.0 / (B * T * 2)
    (ref.sum() * dloss).backward()
    losses2 = np.full((B, T), np.nan, dtype=np.float32)
    cpu.softmax_crossentropy(losses2, logits, targets, V, dloss)
    np.testing.assert_array_equal(losses2, losses)
    close(logits[..., :V], lg_t.grad, rtol=1e-4, atol=1e-8)
    assert not logits[..., V:].any()


def test_softmax_crossentropy_rejects_targets_outside_the_vocab():
    logits = np.zeros((1, 2, 128), dtype=np.float32)
    losses = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(LlmcError, match="target"):
        cpu.softmax_crossentropy(losses, logits, np.array([[0, 37]], dtype=np.int32), 37)


# ----------------------------------------------------------------------------- optimizer

@pytest.mark.parametrize("n", [1000, 4 * 32768 + 12345])  # small, and large enough for the threaded path
@pytest.mark.parametrize("step", [1, 7])
@pytest.mark.parametrize("weight_decay,grad_scale", [(0.0, 1.0), (0.1, 0.37)])
def test_adamw_update_matches_torch(n, step, weight_decay, grad_scale):
    rng = np.random.default_rng(9)
    lr, beta1, beta2, eps = 3e-3, 0.9, 0.95, 1e-8
    param, grad = rand(rng, n), rand(rng, n)
    m0, v0 = rand(rng, n, scale=0.1), np.abs(rand(rng, n, scale=0.1))
    if step == 1:
        m0[:], v0[:] = 0.0, 0.0

    p_t = torch.nn.Parameter(torch.tensor(param, dtype=torch.float64))
    opt = torch.optim.AdamW([p_t], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                            foreach=False, fused=False)
    p_t.grad = torch.tensor(grad * np.float64(grad_scale))
    opt.state[p_t] = {"step": torch.tensor(float(step - 1)), "exp_avg": torch.tensor(m0, dtype=torch.float64),
                      "exp_avg_sq": torch.tensor(v0, dtype=torch.float64)}
    opt.step()

    p, g, m, v = param.copy(), grad.copy(), m0.copy(), v0.copy()
    cpu.adamw_update(p, g, m, v, None, hp=AdamW(lr, weight_decay, beta1, beta2, eps), step=step, grad_scale=grad_scale)
    np.testing.assert_array_equal(g, grad)  # the gradient is read, never scaled in place
    close(m, opt.state[p_t]["exp_avg"], rtol=1e-5, atol=1e-7)
    close(v, opt.state[p_t]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    # an Adam step moves each weight by about lr: check the update itself to 1e-4 of lr
    close(p - param, (p_t.detach() - torch.tensor(param, dtype=torch.float64)).numpy(), rtol=1e-3, atol=1e-4 * lr)


def test_adamw_update_with_master_weights():
    rng = np.random.default_rng(10)
    n = 513
    param, grad, master = rand(rng, n), rand(rng, n), rand(rng, n)
    ref = master.copy()
    hp = AdamW(lr=1e-3, weight_decay=0.1)
    cpu.adamw_update(ref, grad, np.zeros(n, np.float32), np.zeros(n, np.float32), None, hp=hp, step=1)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    cpu.adamw_update(param, grad, m, v, master, hp=hp, step=1)
    np.testing.assert_array_equal(master, ref)  # the update runs on the master copy
    np.testing.assert_array_equal(param, master)  # and the parameter follows it


@pytest.mark.parametrize("decayed", [(), ((0, 5), (300, 1000)), ((17, 4 * 32768 + 5),)])
def test_adamw_update_decays_only_the_given_spans(decayed):
    rng = np.random.default_rng(12)
    n = 4 * 32768 + 1000
    param, grad = rand(rng, n), rand(rng, n)
    m0, v0 = rand(rng, n, scale=0.1), np.abs(rand(rng, n, scale=0.1))
    got = [a.copy() for a in (param, m0, v0)]
    cpu.adamw_update(got[0], grad, got[1], got[2], None, hp=AdamW(lr=1e-2, weight_decay=0.5), step=3, grad_scale=0.7,
                     decayed=decayed)
    want = [a.copy() for a in (param, m0, v0)]
    mask = np.zeros(n, bool)
    for lo, hi in decayed:
        mask[lo:hi] = True
    for decayed_part in (mask, ~mask):  # each part on its own, with and without weight decay
        idx = np.flatnonzero(decayed_part)
        if idx.size:
            part = [a[idx].copy() for a in want]
            hp = AdamW(lr=1e-2, weight_decay=0.5 if decayed_part is mask else 0.0)
            cpu.adamw_update(part[0], grad[idx], part[1], part[2], None, hp=hp, step=3, grad_scale=0.7)
            for a, b in zip(want, part):
                a[idx] = b
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_adamw_update_clips_by_a_device_norm():
    rng = np.random.default_rng(13)
    n = 777
    param, grad = rand(rng, n), rand(rng, n)
    hyper = dict(hp=AdamW(lr=1e-2, weight_decay=0.1), step=2)
    for norm_sq, scale in ((4.0, 0.5), (0.25, 1.0)):  # norm 2 clipped to 1; norm 0.5 left alone
        got, want = [[param.copy(), np.full(n, 0.1, np.float32), np.full(n, 0.2, np.float32)] for _ in range(2)]
        cpu.adamw_update(got[0], grad, got[1], got[2], None, **hyper, norm_squared=np.array([norm_sq], np.float32),
                         max_norm=1.0)
        cpu.adamw_update(want[0], grad, want[1], want[2], None, **hyper, grad_scale=scale)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    for bad in (np.nan, np.inf):  # a non-finite norm: nothing changes
        state = [param.copy(), np.full(n, 0.1, np.float32), np.full(n, 0.2, np.float32)]
        cpu.adamw_update(state[0], grad, state[1], state[2], None, **hyper, norm_squared=np.array([bad], np.float32))
        np.testing.assert_array_equal(state[0], param)
        assert (state[1] == np.float32(0.1)).all() and (state[2] == np.float32(0.2)).all()


@pytest.mark.parametrize("n", [1, 1000, 300001])
def test_global_norm_squared(n):
    grads = np.random.default_rng(11).standard_normal(n).astype(np.float32)
    out = np.full(1, np.nan, dtype=np.float32)
    cpu.global_norm_squared(out, grads)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.sum(grads.astype(np.float64) ** 2), rtol=1e-5)


def test_primitive_map_names_where_each_op_lives():
    """PRIMITIVE_MAP covers every layer and optimizer op: the CPU function is defined in its module, the
    GPU module defines the op and launches its kernel files (read as text: no CuPy needed here)."""
    import ast
    from pathlib import Path

    from llmc.core.primitives import PRIMITIVE_MAP, REQUIRED_OPS

    core = Path(cpu.__file__).resolve().parents[1]
    described = {"to_device", "to_host", "synchronize", "fetch", "graph", "promised_flops", "device_name",
                 "memory_usage", "first_run_note", "attention_stats_shape"}  # the backend's description, not layers
    assert set(PRIMITIVE_MAP) == set(REQUIRED_OPS) - described
    for op, (cpu_module, gpu_module, kernels, _) in PRIMITIVE_MAP.items():
        assert getattr(cpu, op).__module__ == "llmc.core." + cpu_module.removesuffix(".py").replace("/", "."), op
        source = (core / gpu_module).read_text()
        assert op in {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}, op
        for kernel in kernels:
            assert (core / "gpu/kernels" / kernel).is_file() and f'"{kernel.removesuffix(".cu")}"' in source, op

"""The NumPy fp32 layers: llm.c's train_gpt2.c, vectorized, and the ops train_llama3.cu adds for Llama 3
(RMSNorm, RoPE, SwiGLU, grouped-query attention). Every matmul goes to BLAS, attention is
batched matmuls, and outputs go into the caller's preallocated arrays (see core/primitives.py)."""

import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llmc.core.config import GELU_CUBIC, GELU_SCALE, LN_EPS
from llmc.core.cpu.blas import accumulate_at_b
from llmc.core.errors import LlmcError

_scratch: dict[tuple, np.ndarray] = {}


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The second of two threads for element-wise work, started at first use."""
    return ThreadPoolExecutor(max_workers=1)


def scratch(tag: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A reused temporary (one per thread), so steady-state steps allocate nothing large."""
    key = (tag, shape, np.dtype(dtype).str, threading.get_ident())
    buf = _scratch.get(key)
    if buf is None:
        buf = _scratch[key] = np.empty(shape, dtype=dtype)
    return buf


def rows(x: np.ndarray) -> np.ndarray:
    """(..., C) -> (N, C) view; the buffers are contiguous so this never copies."""
    return x.reshape(-1, x.shape[-1])


def in_halves(fn, *arrays: np.ndarray) -> None:
    """fn on the first and second halves of the arrays' rows at once: two threads, as NumPy's
    ufuncs release the GIL (every element-wise layer is independent across rows)."""
    half = arrays[0].shape[0] // 2
    if half == 0:
        return fn(*arrays)
    job = _pool().submit(fn, *(a[:half] for a in arrays))
    fn(*(a[half:] for a in arrays))
    job.result()


# ----------------------------------------------------------------------------- encoder

def encoder_forward(out, inp, wte, wpe):
    B, T = inp.shape
    np.take(wte, inp, axis=0, out=out)  # (B, T, C)
    if wpe is not None:  # Llama has no position embedding (RoPE turns q and k instead)
        out += wpe[:T]


def encoder_backward(dwte, dwpe, dout, inp):
    B, T = inp.shape
    np.add.at(dwte, inp.reshape(-1), rows(dout))
    if dwpe is not None:
        dwpe[:T] += dout.sum(axis=0)


# ----------------------------------------------------------------------------- layernorm, residual

def layernorm_forward(out, mean, rstd, inp, weight, bias):
    C = inp.shape[-1]
    np.mean(inp, axis=-1, out=mean)
    np.subtract(inp, mean[..., None], out=out)  # centered
    var = np.einsum("...c,...c->...", out, out) / C
    np.sqrt(var + LN_EPS, out=rstd)
    np.reciprocal(rstd, out=rstd)
    out *= rstd[..., None]
    out *= weight
    out += bias


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, dproj_bias=None):
    C = inp.shape[-1]
    norm = scratch("ln_norm", inp.shape)
    np.subtract(inp, mean[..., None], out=norm)
    norm *= rstd[..., None]  # (B, T, C) normalized input
    dout2, norm2 = rows(dout), rows(norm)
    dbias += dout2.sum(axis=0)
    dweight += np.einsum("nc,nc->c", dout2, norm2)
    dnorm = scratch("ln_dnorm", inp.shape)
    np.multiply(dout, weight, out=dnorm)
    dnorm_mean = dnorm.mean(axis=-1, keepdims=True)
    dnorm_norm_mean = np.einsum("...c,...c->...", dnorm, norm)[..., None] / C
    dnorm -= dnorm_mean
    norm *= dnorm_norm_mean
    dnorm -= norm
    dnorm *= rstd[..., None]
    dinp += dnorm
    if dproj_bias is not None:
        dproj_bias += rows(dinp).sum(axis=0)


def rmsnorm_forward(out, rstd, inp, weight, eps):
    C = inp.shape[-1]
    ms = np.einsum("...c,...c->...", inp, inp) / C  # (B, T) mean square
    np.sqrt(ms + np.float32(eps), out=rstd)
    np.reciprocal(rstd, out=rstd)
    np.multiply(inp, rstd[..., None], out=out)
    out *= weight


def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd):
    # y = x r w with r = (mean(x^2) + eps)^-1/2, dr/dx = -r^3 x / C: with n = x r and g = dout w,
    # dx = r (g - n mean(g n))
    C = inp.shape[-1]
    norm = scratch("rms_norm", inp.shape)
    np.multiply(inp, rstd[..., None], out=norm)  # (B, T, C) normalized input
    dweight += np.einsum("nc,nc->c", rows(dout), rows(norm))
    dnorm = scratch("rms_dnorm", inp.shape)
    np.multiply(dout, weight, out=dnorm)
    norm *= np.einsum("...c,...c->...", dnorm, norm)[..., None] / C
    dnorm -= norm
    dnorm *= rstd[..., None]
    dinp += dnorm


# ----------------------------------------------------------------------------- rope

def _rope_pairs(x, num_heads, num_kv_heads):
    """The query and key heads of a (B, T, (NH+2*NKV)*HS) tensor as (B, T, NH+NKV, HS/2) views of each
    pair's first and second channel."""
    B, T, QKV = x.shape
    HS = QKV // (num_heads + 2 * num_kv_heads)
    pairs = x.reshape(B, T, num_heads + 2 * num_kv_heads, HS // 2, 2)[:, :, :num_heads + num_kv_heads]
    return pairs[..., 0], pairs[..., 1]


def _rope_turn(out, inp, freqs_cis, num_heads, num_kv_heads, back):
    """Each query/key pair (x0, x1) turned by the angle, (x0 cos - x1 sin, x1 cos + x0 sin), or by
    minus it when back; the value heads are copied. out may be inp: both sin products are taken first."""
    B, T, QKV = inp.shape
    QK = QKV // (num_heads + 2 * num_kv_heads) * (num_heads + num_kv_heads)
    cos = freqs_cis[:T, None, :, 0]  # (T, 1, HS/2): broadcast over the heads
    sin = freqs_cis[:T, None, :, 1]
    x0, x1 = _rope_pairs(inp, num_heads, num_kv_heads)
    o0, o1 = _rope_pairs(out, num_heads, num_kv_heads)
    x0_sin, x1_sin = scratch("rope_x0_sin", x0.shape), scratch("rope_x1_sin", x0.shape)
    np.multiply(x0, sin, out=x0_sin)
    np.multiply(x1, sin, out=x1_sin)
    first, second = (np.add, np.subtract) if back else (np.subtract, np.add)
    np.multiply(x0, cos, out=o0)
    first(o0, x1_sin, out=o0)
    np.multiply(x1, cos, out=o1)
    second(o1, x0_sin, out=o1)
    out[..., QK:] = inp[..., QK:]


def rope_forward(out, inp, freqs_cis, num_heads, num_kv_heads):
    _rope_turn(out, inp, freqs_cis, num_heads, num_kv_heads, back=False)


def rope_backward(dinp, dout, freqs_cis, num_heads, num_kv_heads):
    # a rotation's gradient is its transpose: the turn by minus the angle (dinp may be dout, as llm.c's in place)
    _rope_turn(dinp, dout, freqs_cis, num_heads, num_kv_heads, back=True)


# ----------------------------------------------------------------------------- matmul, gelu, swiglu

def matmul_forward(out, inp, weight, bias, pre_gelu=None, residual=None):
    if pre_gelu is not None and residual is not None:
        raise LlmcError("matmul_forward: a residual cannot follow the GELU")
    target = out if pre_gelu is None else pre_gelu
    np.matmul(rows(inp), weight.T, out=rows(target))  # (N, OC)
    if bias is not None:
        target += bias
    if residual is not None:
        target += residual
    if pre_gelu is not None:
        gelu_forward(out, pre_gelu)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None):
    dout2 = rows(dout)
    np.matmul(dout2, weight, out=rows(dinp))  # (N, C)
    accumulate_at_b(rows(dweight), dout2, rows(inp))  # (OC, C) +=
    if dbias is not None:
        dbias += dout2.sum(axis=0)
    if pre_gelu is not None:
        gelu_backward(dinp, pre_gelu, dinp)


def gelu_forward(out, inp):
    in_halves(_gelu_forward, rows(out), rows(inp))


def _gelu_forward(out, inp):
    t = scratch("gelu_t", inp.shape)
    np.multiply(inp, inp, out=t)
    t *= GELU_CUBIC
    t += 1.0
    t *= inp
    t *= GELU_SCALE
    np.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    np.multiply(inp, t, out=out)


def gelu_backward(dinp, inp, dout):
    in_halves(_gelu_backward, rows(dinp), rows(inp), rows(dout))


def _gelu_backward(dinp, inp, dout):
    # d/dx 0.5x(1+tanh(u)) = 0.5(1+tanh(u)) + 0.5x(1-tanh(u)^2)u',  u = s(x + c x^3)
    x2, th, local = (scratch(tag, inp.shape) for tag in ("gelu_x2", "gelu_th", "gelu_local"))
    np.multiply(inp, inp, out=x2)
    np.multiply(x2, GELU_CUBIC, out=th)
    th += 1.0
    th *= inp
    th *= GELU_SCALE
    np.tanh(th, out=th)  # tanh(u)
    x2 *= 3 * GELU_CUBIC
    x2 += 1.0
    x2 *= inp
    x2 *= 0.5 * GELU_SCALE  # 0.5 x u'
    np.multiply(th, th, out=local)
    np.subtract(1.0, local, out=local)
    local *= x2
    th += 1.0
    th *= 0.5
    local += th
    np.multiply(local, dout, out=dinp)


def _sigmoid(out, x):
    """out = 1 / (1 + exp(-x)); exp overflows to inf for x < -88, giving the right 0."""
    with np.errstate(over="ignore"):  # per thread: in_halves' second thread sets its own
        np.negative(x, out=out)
        np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)


def swiglu_forward(out, inp):
    in_halves(_swiglu_forward, rows(out), rows(inp))


def _swiglu_forward(out, inp):
    H = out.shape[-1]
    x1, x2 = inp[:, :H], inp[:, H:]  # c_fc's output, c_fc2's (the gate)
    _sigmoid(out, x2)
    out *= x2
    out *= x1


def swiglu_backward(dinp, inp, dout):
    in_halves(_swiglu_backward, rows(dinp), rows(inp), rows(dout))


def _swiglu_backward(dinp, inp, dout):
    # out = x1 silu(x2): dx1 = dout silu(x2), dx2 = dout x1 silu'(x2), silu' = s (1 + x2 (1 - s)), s = sigmoid(x2)
    H = dout.shape[-1]
    x1, x2 = inp[:, :H], inp[:, H:]
    dx1, dx2 = dinp[:, :H], dinp[:, H:]
    s = scratch("swiglu_s", dout.shape)
    _sigmoid(s, x2)
    np.multiply(x2, s, out=dx1)  # silu(x2)
    np.subtract(1.0, s, out=dx2)
    dx2 *= x2
    dx2 += 1.0
    dx2 *= s  # silu'(x2)
    dx2 *= x1
    dx2 *= dout
    dx1 *= dout


# ----------------------------------------------------------------------------- attention

def attention_stats_shape(B: int, T: int, NH: int) -> tuple[int, ...]:
    return (B, NH, T, T)


def _heads(x, B, T, NH):
    """(B, T, NH*HS) view -> (B, NH, T, HS) view."""
    return x.reshape(B, T, NH, -1).transpose(0, 2, 1, 3)


def _causal_mask(T: int) -> np.ndarray:
    key = ("mask", (T, T), "|b1")
    if key not in _scratch:
        _scratch[key] = np.triu(np.ones((T, T), dtype=bool), k=1)
    return _scratch[key]


def _qkv_heads(qkv, num_heads, num_kv_heads):
    """q (B, NH, T, HS), k and v (B, NKV, T, HS): views of the heads of a (B, T, (NH+2*NKV)*HS) tensor."""
    B, T, QKV = qkv.shape
    NH, NKV = num_heads, num_kv_heads or num_heads
    if NH % NKV:
        raise LlmcError(f"attention: {NH} query heads not divisible by {NKV} key/value heads")
    if QKV % (NH + 2 * NKV):
        raise LlmcError(f"attention: {QKV} qkv channels not divisible by {NH + 2 * NKV} heads "
                        f"({NH} query, {NKV} key and {NKV} value heads)")
    HS = QKV // (NH + 2 * NKV)
    return (_heads(qkv[..., :NH * HS], B, T, NH), _heads(qkv[..., NH * HS:(NH + NKV) * HS], B, T, NKV),
            _heads(qkv[..., (NH + NKV) * HS:], B, T, NKV))


def _repeat_kv(x, num_heads, tag):
    """(B, NKV, T, HS) -> (B, NH, T, HS), each key/value head repeated for its NH/NKV query heads
    (train_llama3.py's repeat_kv); GPT-2's x itself."""
    B, NKV, T, HS = x.shape
    if NKV == num_heads:
        return x
    out = scratch(tag, (B, num_heads, T, HS))
    np.copyto(out.reshape(B, NKV, num_heads // NKV, T, HS), x[:, :, None])
    return out


def attention_forward(out, stats, qkv, num_heads, num_kv_heads=None):
    B, T, _ = qkv.shape
    q, k, v = _qkv_heads(qkv, num_heads, num_kv_heads)
    k, v = _repeat_kv(k, num_heads, "att_k"), _repeat_kv(v, num_heads, "att_v")
    att = stats  # (B, NH, T, T) probabilities
    np.matmul(q, k.swapaxes(-1, -2), out=att)
    att *= 1.0 / math.sqrt(q.shape[-1])
    np.copyto(att, -np.inf, where=_causal_mask(T))
    att -= att.max(axis=-1, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    np.matmul(att, v, out=_heads(out, B, T, num_heads))


def attention_backward(dqkv, dout, qkv, out, stats, num_heads, num_kv_heads=None):
    B, T, _ = qkv.shape
    q, k, v = _qkv_heads(qkv, num_heads, num_kv_heads)
    dq, dk, dv = _qkv_heads(dqkv, num_heads, num_kv_heads)
    k, v = _repeat_kv(k, num_heads, "att_k"), _repeat_kv(v, num_heads, "att_v")
    # with grouped keys/values the gradients of the repeated heads are summed over each group below
    grouped = dk.shape[1] != num_heads
    dk_rep = scratch("att_dk", k.shape) if grouped else dk  # (B, NH, T, HS)
    dv_rep = scratch("att_dv", v.shape) if grouped else dv
    att, dout_h = stats, _heads(dout, B, T, num_heads)
    datt = scratch("datt", att.shape)
    np.matmul(dout_h, v.swapaxes(-1, -2), out=datt)  # (B, NH, T, T)
    np.matmul(att.swapaxes(-1, -2), dout_h, out=dv_rep)
    # softmax backward: dpre = att * (datt - sum(datt * att)); masked entries have att = 0
    datt -= np.einsum("bhts,bhts->bht", datt, att)[..., None]
    datt *= att
    datt *= 1.0 / math.sqrt(q.shape[-1])
    np.matmul(datt, k, out=dq)
    np.matmul(datt.swapaxes(-1, -2), q, out=dk_rep)
    if grouped:
        for repeated, grad in ((dk_rep, dk), (dv_rep, dv)):  # (B, NKV, NH/NKV, T, HS) -> (B, NKV, T, HS)
            np.sum(repeated.reshape(*grad.shape[:2], -1, T, grad.shape[-1]), axis=2, out=grad)


# ----------------------------------------------------------------------------- classifier

def softmax_crossentropy(losses, logits, targets, vocab_size, dloss=None):
    t = targets.reshape(-1)
    if t.min(initial=0) < 0 or t.max(initial=0) >= vocab_size:
        raise LlmcError(f"target token ids must be in [0, {vocab_size})")
    in_halves(lambda lo, lg, tg: _softmax_crossentropy(lo, lg, tg, vocab_size, dloss),
              losses.reshape(-1), rows(logits), t)


def _softmax_crossentropy(losses, lg, t, vocab_size, dloss):
    N = lg.shape[0]  # lg (N, Vp)
    real = lg[:, :vocab_size]
    maxv = real.max(axis=1)
    target_logit = real[np.arange(N), t] - maxv
    probs = real if dloss is not None else scratch("probs", (N, vocab_size))
    np.subtract(real, maxv[:, None], out=probs)
    np.exp(probs, out=probs)
    sums = probs.sum(axis=1)
    losses[:] = np.log(sums) - target_logit
    if dloss is not None:  # dlogits in place: (softmax - onehot) * dloss, padded columns zero
        probs *= (dloss / sums)[:, None]
        probs[np.arange(N), t] -= dloss
        lg[:, vocab_size:] = 0.0

"""FP8 on the CPU: the reference for the GPU's FP8 path (-f8 1). Values are rounded to E4M3 / E5M2 exactly
as the GPU's conversions do (ml_dtypes: nearest even, after saturating to the format's largest finite value),
stored as their bit patterns in uint8, and multiplied in fp32 after widening; the GPU accumulates the same
products in another order."""

import ml_dtypes
import numpy as np

from llmc.core.cpu.layers import gelu_backward, gelu_forward, rows
from llmc.core.primitives import AMAX_FLOOR, E4M3_MAX, E5M2_MAX, Fp8

FORMATS = {False: (ml_dtypes.float8_e4m3fn, E4M3_MAX), True: (ml_dtypes.float8_e5m2, E5M2_MAX)}


def quantize_fp8(out, out_t, scale_inv, inp, e5m2=False, gelu=False):
    fmt, fmt_max = FORMATS[e5m2]
    x = rows(inp).astype(np.float32, copy=False)
    if gelu:
        x_gelu = np.empty_like(x)
        gelu_forward(x_gelu, x)
        x = x_gelu
    # NaN is passed over, as the GPU's fmaxf does (it still reaches the FP8 data, and the loss)
    amax = np.float32(max(float(np.fmax.reduce(np.abs(x), axis=None, initial=0.0)), AMAX_FLOOR))
    scale = np.float32(fmt_max) / amax
    bits = np.clip(x * scale, -fmt_max, fmt_max).astype(fmt).view(np.uint8)
    if out is not None:
        rows(out)[...] = bits
    if out_t is not None:
        out_t[...] = bits.T
    scale_inv[0] = np.float32(1.0) / scale


def _widen(t: Fp8, e5m2: bool) -> np.ndarray:
    """The FP8 values as fp32, unscaled (the GEMM's operands)."""
    return rows(t.data).view(FORMATS[e5m2][0]).astype(np.float32)


def _scales(a: Fp8, b: Fp8) -> np.float32:
    return np.float32(a.scale_inv[0]) * np.float32(b.scale_inv[0])


def matmul_forward_fp8(out, inp, weight, bias, pre_gelu=None, residual=None):
    target = rows(out if pre_gelu is None else pre_gelu)
    np.matmul(_widen(inp, False), _widen(weight, False).T, out=target)  # (N, OC)
    target *= _scales(inp, weight)
    if bias is not None:
        target += bias
    if residual is not None:
        target += rows(residual)
    if pre_gelu is not None:
        gelu_forward(out, pre_gelu)


def matmul_backward_fp8(dinp, dweight, dbias, dout, dout8, dout8_t, inp_t, weight_t, pre_gelu=None):
    grad = rows(dinp)
    np.matmul(_widen(dout8, True), _widen(weight_t, False).T, out=grad)  # (N, C)
    grad *= _scales(dout8, weight_t)
    dw = _widen(dout8_t, True) @ _widen(inp_t, False).T  # (OC, C)
    dw *= _scales(dout8_t, inp_t)
    dweight += dw
    if dbias is not None:
        dbias += rows(dout).sum(axis=0)
    if pre_gelu is not None:
        gelu_backward(dinp, pre_gelu, dinp)

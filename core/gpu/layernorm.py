"""LayerNorm forward (alone and fused with the residual add), its backward, and the residual add
(kernels/layernorm.cu, kernels/residual.cu)."""

import numpy as np

from llmc.core.gpu.runtime import BF16, NUM_SMS, cdiv, check, check_arrays, launch, rows, scratch

ROWS_PER_BLOCK = 8  # forward: one warp per row
BWD_WARPS = 8  # backward: warps per block, each with 2*C floats of shared memory
BWD_BLOCKS_PER_SM = 2  # kernels/layernorm.cu's LN_MIN_BLOCKS


def _check(op: str, out, mean, rstd, inp, weight, bias) -> tuple[int, int]:
    check_arrays(op, BF16, out, inp, weight, bias)
    check_arrays(op, np.float32, mean, rstd)
    N, C = rows(inp)
    check(out.shape == inp.shape, f"{op}: output {tuple(out.shape)} differs from input {tuple(inp.shape)}")
    check(weight.shape == (C,) and bias.shape == (C,), f"{op}: weight and bias must be ({C},)")
    check(mean.size == N and rstd.size == N, f"{op}: mean and rstd need {N} entries")
    check(C % 8 == 0, f"{op}: channels {C} must be a multiple of 8")
    return N, C


def layernorm_forward(out, mean, rstd, inp, weight, bias) -> None:
    """out (B,T,C) = (inp - mean) * rstd * weight + bias, eps 1e-5; saves mean, rstd (B,T)."""
    N, C = _check("layernorm_forward", out, mean, rstd, inp, weight, bias)
    launch("layernorm", "layernorm_forward", cdiv(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK,
           (out, mean, rstd, inp, weight, bias, np.int32(N), np.int32(C)))


def residual_forward(out, inp1, inp2) -> None:
    """out = inp1 + inp2."""
    check_arrays("residual_forward", BF16, out, inp1, inp2)
    check(out.shape == inp1.shape == inp2.shape, "residual_forward: shapes differ")
    check(out.size % 8 == 0, "residual_forward: size must be a multiple of 8")
    n8 = out.size // 8
    launch("residual", "residual_forward", cdiv(n8, 256), 256, (out, inp1, inp2, np.int64(n8)))


def residual_layernorm_forward(residual, out, mean, rstd, inp1, inp2, weight, bias) -> None:
    """residual = inp1 + inp2, then layernorm_forward(out, mean, rstd, residual, weight, bias)."""
    N, C = _check("residual_layernorm_forward", out, mean, rstd, residual, weight, bias)
    check_arrays("residual_layernorm_forward", BF16, inp1, inp2)
    check(inp1.shape == inp2.shape == residual.shape, "residual_layernorm_forward: residual shapes differ")
    launch("layernorm", "residual_layernorm_forward", cdiv(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK,
           (residual, out, mean, rstd, inp1, inp2, weight, bias, np.int32(N), np.int32(C)))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd) -> None:
    """dinp += dL/dinp; dweight += ...; dbias += ... (all accumulate)."""
    N, C = _check("layernorm_backward", dout, mean, rstd, inp, weight, dbias)
    check_arrays("layernorm_backward", BF16, dinp, dweight)
    check(dinp.shape == inp.shape and dweight.shape == (C,), "layernorm_backward: dinp/dweight shapes differ")
    smem = BWD_WARPS * 2 * C * 4
    check(smem <= 227 * 1024, f"layernorm_backward: channels {C} exceed shared memory")
    per_sm = max(1, min(BWD_BLOCKS_PER_SM, (227 * 1024) // (smem + 1024)))  # registers, shared memory
    blocks = max(1, min(cdiv(N, BWD_WARPS), NUM_SMS * per_sm))
    partial = scratch("layernorm_partial", blocks * 2 * C * 4)
    launch("layernorm", "layernorm_backward", blocks, 32 * BWD_WARPS,
           (dinp, partial, dout, inp, weight, mean, rstd, np.int32(N), np.int32(C)), shared_mem=smem)
    launch("layernorm", "layernorm_backward_reduce", cdiv(2 * C, 32), (32, 8),
           (dweight, dbias, partial, np.int32(blocks), np.int32(C)))

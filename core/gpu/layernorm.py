"""LayerNorm forward and backward, and the residual add (kernels/layernorm.cu, kernels/residual.cu).
The model's residual adds go into the projections' GEMMs (matmul_forward's residual) and the
projection bias gradients into layernorm backward (its dproj_bias), so neither costs a pass."""

import numpy as np

from llmc.core.gpu.runtime import (BF16, after_side_work, cdiv, check, check_arrays, current, launch, pack_width,
                                   ptr, rows, scratch, settle)

ROWS_PER_BLOCK = 8  # forward: one warp per row
BWD_WARPS = 8  # backward: warps per block, each with 2*C (3*C with dproj_bias) floats of shared memory
BWD_BLOCKS_PER_SM = 2  # kernels/layernorm.cu's LN_MIN_BLOCKS


def _check(op: str, out, mean, rstd, inp, weight, bias) -> tuple[int, int]:
    check_arrays(op, BF16, out, inp, weight, bias)
    check_arrays(op, np.float32, mean, rstd)
    N, C = rows(inp)
    check(out.shape == inp.shape, f"{op}: output {tuple(out.shape)} differs from input {tuple(inp.shape)}")
    check(weight.shape == (C,) and bias.shape == (C,), f"{op}: weight and bias must be ({C},)")
    check(mean.size == N and rstd.size == N, f"{op}: mean and rstd need {N} entries")
    return N, C


@after_side_work
def layernorm_forward(out, mean, rstd, inp, weight, bias) -> None:
    """out (B,T,C) = (inp - mean) * rstd * weight + bias, eps 1e-5; saves mean, rstd (B,T)."""
    N, C = _check("layernorm_forward", out, mean, rstd, inp, weight, bias)
    launch("layernorm", "layernorm_forward", cdiv(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK,
           (out, mean, rstd, inp, weight, bias, np.int32(N), np.int32(C)), pack=pack_width(C, out, inp, weight, bias))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, dproj_bias=None) -> None:
    """dinp += dL/dinp; dweight += ...; dbias += ... (all accumulate); with dproj_bias, also
    dproj_bias += the updated dinp summed over rows."""
    N, C = _check("layernorm_backward", dout, mean, rstd, inp, weight, dbias)
    check_arrays("layernorm_backward", BF16, dinp, dweight, dproj_bias)
    check(dinp.shape == inp.shape and dweight.shape == (C,), "layernorm_backward: dinp/dweight shapes differ")
    check(dproj_bias is None or dproj_bias.shape == (C,), f"layernorm_backward: dproj_bias must be ({C},)")
    sums = 2 if dproj_bias is None else 3
    smem = BWD_WARPS * sums * C * 4
    check(smem <= 227 * 1024, f"layernorm_backward: channels {C} exceed shared memory")
    per_sm = max(1, min(BWD_BLOCKS_PER_SM, (227 * 1024) // (smem + 1024)))  # registers, shared memory
    blocks = max(1, min(cdiv(N, BWD_WARPS), current().sms * per_sm))
    partial = scratch("layernorm_partial", blocks * sums * C * 4)
    pack = pack_width(C, dinp, dout, inp, weight)  # the reduce writes dweight, dbias, dproj_bias one by one
    settle(reads=(dout, inp, weight, mean, rstd), writes=(dinp, dweight, dbias, dproj_bias))
    launch("layernorm", "layernorm_backward", blocks, 32 * BWD_WARPS,
           (dinp, partial, dout, inp, weight, mean, rstd, np.int32(N), np.int32(C), np.int32(sums)), shared_mem=smem,
           pack=pack)
    launch("layernorm", "layernorm_backward_reduce", cdiv(sums * C, 32), (32, 8),
           (dweight, dbias, ptr(dproj_bias), partial, np.int32(blocks), np.int32(C), np.int32(sums)), pack=pack)

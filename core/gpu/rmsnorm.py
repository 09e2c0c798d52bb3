"""RMSNorm forward and backward (Llama; kernels/rmsnorm.cu): layernorm.py's kernels without the mean and
the bias. The backward's dinp accumulates into the residual stream's gradient, as layernorm's does."""

import numpy as np

from llmc.core.gpu.runtime import (BF16, after_side_work, cdiv, check, check_arrays, current, launch, pack_width,
                                   rows, scratch, settle)

ROWS_PER_BLOCK = 8  # forward: one warp per row
BWD_WARPS = 8  # backward: warps per block, each with C floats of shared memory (its dweight slice)
BWD_BLOCKS_PER_SM = 1  # kernels/rmsnorm.cu's RMS_MIN_BLOCKS


def _check(op: str, out, rstd, inp, weight) -> tuple[int, int]:
    check_arrays(op, BF16, out, inp, weight)
    check_arrays(op, np.float32, rstd)
    N, C = rows(inp)
    check(out.shape == inp.shape, f"{op}: output {tuple(out.shape)} differs from input {tuple(inp.shape)}")
    check(weight.shape == (C,), f"{op}: weight must be ({C},)")
    check(rstd.size == N, f"{op}: rstd needs {N} entries")
    return N, C


@after_side_work
def rmsnorm_forward(out, rstd, inp, weight, eps: float) -> None:
    """out (B,T,C) = inp * rstd * weight with rstd (B,T) = 1 / sqrt(mean(inp^2) + eps), saved."""
    N, C = _check("rmsnorm_forward", out, rstd, inp, weight)
    launch("rmsnorm", "rmsnorm_forward", cdiv(N, ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK,
           (out, rstd, inp, weight, np.int32(N), np.int32(C), np.float32(eps)), pack=pack_width(C, out, inp, weight))


def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd) -> None:
    """dinp += dL/dinp (the residual stream's gradient); dweight += ..."""
    N, C = _check("rmsnorm_backward", dout, rstd, inp, weight)
    check_arrays("rmsnorm_backward", BF16, dinp, dweight)
    check(dinp.shape == inp.shape and dweight.shape == (C,), "rmsnorm_backward: dinp/dweight shapes differ")
    smem = BWD_WARPS * C * 4
    check(smem <= 227 * 1024, f"rmsnorm_backward: channels {C} exceed shared memory")
    per_sm = max(1, min(BWD_BLOCKS_PER_SM, (227 * 1024) // (smem + 1024)))
    blocks = max(1, min(cdiv(N, BWD_WARPS), current().sms * per_sm))
    partial = scratch("rmsnorm_partial", blocks * C * 4)
    pack = pack_width(C, dinp, dout, inp, weight)  # the reduce writes dweight one by one
    settle(reads=(dout, inp, weight, rstd), writes=(dinp, dweight))
    launch("rmsnorm", "rmsnorm_backward", blocks, 32 * BWD_WARPS,
           (dinp, partial, dout, inp, weight, rstd, np.int32(N), np.int32(C)), shared_mem=smem, pack=pack)
    launch("rmsnorm", "rmsnorm_backward_reduce", cdiv(C, 32), (32, 8),
           (dweight, partial, np.int32(blocks), np.int32(C)), pack=pack)

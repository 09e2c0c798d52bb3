"""Linear layers: cuBLASLt with the bias and GELU fused as epilogues in forward (bias and GELU together
through cuDNN's fused kernel where that is faster: gelu_gemm.py), dGELU fused in backward, and a
deterministic accumulating bias-gradient kernel (kernels/matmul.cu). (cuBLASLt's BGRADB epilogue
overwrites instead of accumulating and, measured on an H100 at d12 shapes, slowed the weight-gradient
GEMM by more than the separate kernel costs.)

Backward's bias-gradient kernel (memory-bound) runs beside the stream (runtime.beside), overlapping
the weight and input-gradient GEMMs (compute-bound); nothing needs the bias gradient before the
optimizer. (The weight-gradient GEMMs beside as well measured no faster: two GEMMs only share the SMs.)"""

import numpy as np

from llmc.core.gpu.cublaslt import Epilogue, gemm
from llmc.core.gpu.gelu_gemm import gelu_gemm
from llmc.core.gpu.runtime import (BF16, NUM_SMS, beside, cdiv, check, check_arrays, launch, rows,
                                   scratch, settle)

BIAS_COLS, BIAS_WARPS = 256, 8  # kernels/matmul.cu's block tile


def _check_shapes(op: str, out, inp, weight, bias, pre_gelu) -> tuple[int, int, int]:
    (N, C), (OC, C2) = rows(inp), weight.shape
    check(weight.ndim == 2 and C == C2, f"{op}: input has {C} channels, weight is {tuple(weight.shape)}")
    check(rows(out) == (N, OC), f"{op}: output {tuple(out.shape)} does not match ({N}, {OC})")
    check(bias is None or bias.shape == (OC,), f"{op}: bias must have shape ({OC},)")
    check(pre_gelu is None or pre_gelu.shape == out.shape, f"{op}: pre_gelu must have the output's shape")
    check(C % 8 == 0 and OC % 8 == 0, f"{op}: channels {C} and {OC} must be multiples of 8")
    return N, C, OC


def matmul_forward(out, inp, weight, bias, pre_gelu=None, residual=None) -> None:
    """out (N,OC) = inp (N,C) @ weight(OC,C).T + bias; with pre_gelu, pre_gelu = that and out = gelu(it);
    with residual, out = residual + that (cuBLASLt's C operand: the residual add costs no pass of its own)."""
    check_arrays("matmul_forward", BF16, out, inp, weight, bias, pre_gelu, residual)
    N, C, OC = _check_shapes("matmul_forward", out, inp, weight, bias, pre_gelu)
    check(residual is None or (pre_gelu is None and residual.shape == out.shape),
          "matmul_forward: a residual must have the output's shape and cannot follow the GELU")
    if pre_gelu is not None:
        epilogue = Epilogue.GELU_AUX_BIAS if bias is not None else Epilogue.GELU_AUX
    else:
        epilogue = Epilogue.BIAS if bias is not None else Epilogue.DEFAULT
    settle(reads=(inp, weight, bias, residual), writes=(out, pre_gelu))

    def with_cublaslt() -> None:
        gemm(out.data.ptr, inp.data.ptr, weight.data.ptr, N, OC, C, lda=C, ldb=C, ldd=OC, trans_b=True,
             epilogue=epilogue, bias=0 if bias is None else bias.data.ptr,
             aux=0 if pre_gelu is None else pre_gelu.data.ptr, aux_ld=OC if pre_gelu is not None else 0,
             beta=0.0 if residual is None else 1.0, c=0 if residual is None else residual.data.ptr)
    if epilogue == Epilogue.GELU_AUX_BIAS:
        gelu_gemm(out, pre_gelu, inp, weight, bias, with_cublaslt)
    else:
        with_cublaslt()


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None) -> None:
    """dinp = dout @ weight (times gelu'(pre_gelu) if given); dweight += dout.T @ inp; dbias += sum dout."""
    check_arrays("matmul_backward", BF16, dinp, dweight, dbias, dout, inp, weight, pre_gelu)
    N, C, OC = _check_shapes("matmul_backward", dout, inp, weight, dbias, None)
    check(dinp.shape == inp.shape and dweight.shape == weight.shape,
          "matmul_backward: dinp/dweight must have the shapes of inp/weight")
    check(pre_gelu is None or pre_gelu.shape == inp.shape, "matmul_backward: pre_gelu must have the input's shape")

    settle(reads=(dout, inp, weight, pre_gelu), writes=(dinp, dweight))
    if dbias is not None:
        beside(lambda on: bias_backward(dbias, dout, N, OC, on), reads=(dout,), writes=(dbias,))
    gemm(dweight.data.ptr, dout.data.ptr, inp.data.ptr, OC, C, N, lda=OC, ldb=C, ldd=C, trans_a=True, beta=1.0)
    # dinp last: the next layer's backward reads it right away, from L2 if nothing evicted it
    gemm(dinp.data.ptr, dout.data.ptr, weight.data.ptr, N, C, OC, lda=OC, ldb=C, ldd=C,
         epilogue=Epilogue.DEFAULT if pre_gelu is None else Epilogue.DGELU,
         aux=0 if pre_gelu is None else pre_gelu.data.ptr, aux_ld=C if pre_gelu is not None else 0)


def bias_backward(dbias, dout, N: int, OC: int, on=None) -> None:
    """dbias (OC) += dout (N, OC) summed over rows, via fp32 partials per row slice."""
    tiles = cdiv(OC, BIAS_COLS)
    slices = max(1, min(cdiv(N, BIAS_WARPS), cdiv(4 * NUM_SMS, tiles)))  # ~4 blocks per SM
    partial = scratch("bias_partial", slices * OC * 4)
    launch("matmul", "bias_backward_partial", (tiles, slices), (32, BIAS_WARPS),
           (partial, dout, np.int32(N), np.int32(OC)), on=on)
    launch("matmul", "bias_backward_reduce", cdiv(OC, 32), (32, 8), (dbias, partial, np.int32(slices), np.int32(OC)),
           on=on)

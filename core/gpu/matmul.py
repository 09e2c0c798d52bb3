"""Linear layers: cuBLASLt with the bias and GELU fused as epilogues in forward (bias and GELU together
through cuDNN's fused kernel where that is faster: gelu_gemm.py), dGELU fused in backward, and a
deterministic accumulating bias-gradient kernel (kernels/matmul.cu): cuBLASLt's BGRADB epilogue
overwrites instead of accumulating, and it slowed the weight-gradient GEMM by more than the separate
kernel costs (PERF.md).

Backward's bias-gradient kernel (memory-bound) runs beside the stream (runtime.beside), overlapping
the weight and input-gradient GEMMs (compute-bound); nothing needs the bias gradient before the
optimizer. (The weight-gradient GEMMs stay on the stream: beside, two GEMMs only share the SMs; PERF.md.)

Any shape: cuBLASLt's plain GEMMs take unaligned pointers and leading dimensions (gemm tells its heuristic
the pointers' alignment). Where its bias and GELU epilogues do not take the operands (_epilogue_takes), the
GEMM runs plain and kernels add the bias (kernels/matmul.cu) and the GELU (gelu.py)."""

import numpy as np

from llmc.core.gpu.cublaslt import Epilogue, gemm
from llmc.core.gpu.gelu import gelu_backward, gelu_forward
from llmc.core.gpu.gelu_gemm import gelu_gemm
from llmc.core.gpu.runtime import (BF16, aligned, beside, cdiv, check, check_arrays, current, launch, pack_width,
                                   rows, scratch, settle)

BIAS_WARPS = 8  # kernels/matmul.cu's block tile: BIAS_WARPS rows of 32 packs


def _check_shapes(op: str, out, inp, weight, bias, pre_gelu) -> tuple[int, int, int]:
    (N, C), (OC, C2) = rows(inp), weight.shape
    check(weight.ndim == 2 and C == C2, f"{op}: input has {C} channels, weight is {tuple(weight.shape)}")
    check(rows(out) == (N, OC), f"{op}: output {tuple(out.shape)} does not match ({N}, {OC})")
    check(bias is None or bias.shape == (OC,), f"{op}: bias must have shape ({OC},)")
    check(pre_gelu is None or pre_gelu.shape == out.shape, f"{op}: pre_gelu must have the output's shape")
    return N, C, OC


def _epilogue_takes(ld: int, *arrays) -> bool:
    """cuBLASLt's bias and GELU epilogues are used where the output and the epilogue's operands (bias,
    pre-GELU) start 16-byte aligned in rows of a multiple of 8 elements, as at every shape with C a multiple
    of 8. (On the H200 a bias at a 2-byte offset gave CUBLAS_STATUS_NOT_SUPPORTED, where output and inputs
    at 2-byte offsets ran; cuBLASLt's documentation wants EPILOGUE_AUX_LD a multiple of 8.)"""
    return ld % 8 == 0 and aligned(*arrays)


def matmul_forward(out, inp, weight, bias, pre_gelu=None, residual=None) -> None:
    """out (N,OC) = inp (N,C) @ weight(OC,C).T + bias; with pre_gelu, pre_gelu = that and out = gelu(it);
    with residual, out = residual + that (cuBLASLt's C operand: the residual add costs no pass of its own)."""
    check_arrays("matmul_forward", BF16, out, inp, weight, bias, pre_gelu, residual)
    N, C, OC = _check_shapes("matmul_forward", out, inp, weight, bias, pre_gelu)
    check(residual is None or (pre_gelu is None and residual.shape == out.shape),
          "matmul_forward: a residual must have the output's shape and cannot follow the GELU")
    fused = _epilogue_takes(OC, out, bias, pre_gelu)  # else a plain GEMM, then the bias and GELU kernels
    product, epilogue = forward_epilogue(out, bias, pre_gelu, fused)
    settle(reads=(inp, weight, bias, residual), writes=(out, pre_gelu))

    def with_cublaslt() -> None:
        gemm(product.data.ptr, inp.data.ptr, weight.data.ptr, N, OC, C, lda=C, ldb=C, ldd=OC, trans_b=True,
             **epilogue, beta=0.0 if residual is None else 1.0, c=0 if residual is None else residual.data.ptr)
    # cuDNN's graph is built per shape, not per pointer: only for 16-byte aligned operands and rows
    if epilogue["epilogue"] == Epilogue.GELU_AUX_BIAS and C % 8 == 0 and aligned(inp, weight):
        gelu_gemm(out, pre_gelu, inp, weight, bias, with_cublaslt)
    else:
        with_cublaslt()
    if not fused:
        finish_unfused(out, product, bias, pre_gelu)


def forward_epilogue(out, bias, pre_gelu, fused: bool) -> tuple:
    """(the array a forward GEMM writes, its epilogue's gemm() keywords). Fused, cuBLASLt adds the bias and
    applies the GELU, writing the product before it to pre_gelu; unfused, the GEMM writes the plain product
    (to pre_gelu when a GELU follows) for finish_unfused."""
    if not fused:
        return out if pre_gelu is None else pre_gelu, {"epilogue": Epilogue.DEFAULT}
    if pre_gelu is None:
        return out, {"epilogue": Epilogue.BIAS if bias is not None else Epilogue.DEFAULT,
                     "bias": 0 if bias is None else bias.data.ptr}
    return out, {"epilogue": Epilogue.GELU_AUX_BIAS if bias is not None else Epilogue.GELU_AUX,
                 "bias": 0 if bias is None else bias.data.ptr, "aux": pre_gelu.data.ptr, "aux_ld": pre_gelu.shape[-1]}


def finish_unfused(out, product, bias, pre_gelu) -> None:
    """What an unfused forward epilogue leaves to kernels: the bias into the product, then the GELU."""
    if bias is not None:
        add_bias(product, bias)
    if pre_gelu is not None:
        gelu_forward(out, pre_gelu)


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
    fused = pre_gelu is not None and _epilogue_takes(C, dinp, pre_gelu)
    gemm(dinp.data.ptr, dout.data.ptr, weight.data.ptr, N, C, OC, lda=OC, ldb=C, ldd=C,
         epilogue=Epilogue.DGELU if fused else Epilogue.DEFAULT,
         aux=pre_gelu.data.ptr if fused else 0, aux_ld=C if fused else 0)
    if pre_gelu is not None and not fused:
        gelu_backward(dinp, pre_gelu, dinp)


def add_bias(out, bias) -> None:
    """out (N, OC) += bias (OC), for a GEMM whose bias epilogue cuBLASLt does not take."""
    OC = bias.shape[0]
    pack = pack_width(OC, out, bias)
    packs = out.size // pack
    launch("matmul", "bias_forward", cdiv(packs, 256), 256, (out, bias, np.int64(packs), np.int32(OC)), pack=pack)


def bias_backward(dbias, dout, N: int, OC: int, on=None) -> None:
    """dbias (OC) += dout (N, OC) summed over rows, via fp32 partials per row slice."""
    pack = pack_width(OC, dout)
    tiles = cdiv(OC, 32 * pack)
    slices = max(1, min(cdiv(N, BIAS_WARPS), cdiv(4 * current().sms, tiles)))  # ~4 blocks per SM
    partial = scratch("bias_partial", slices * OC * 4)
    launch("matmul", "bias_backward_partial", (tiles, slices), (32, BIAS_WARPS),
           (partial, dout, np.int32(N), np.int32(OC)), on=on, pack=pack)
    launch("matmul", "bias_backward_reduce", cdiv(OC, 32), (32, 8), (dbias, partial, np.int32(slices), np.int32(OC)),
           on=on, pack=pack)

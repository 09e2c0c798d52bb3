"""FP8 linear layers on Hopper (-f8 1): per-tensor current scaling into E4M3 / E5M2 (kernels/fp8.cu), and
cuBLASLt's FP8 GEMMs with the bf16 path's epilogues (bias, GELU, the residual add, dGELU), fp32 accumulation
and bf16 outputs. cuBLASLt's FP8 kernels take both operands K-major ("TN"), so every GEMM here is
D = A @ B^T: the weight gradient reads the gradient and the layer input transposed (quantize_fp8 writes
them so), the input gradient the weight transposed.

The forward accumulates with Hopper's fast FP8 accumulation, the two backward GEMMs without it (more exact
partial sums), as Transformer Engine does."""

from collections.abc import Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.gpu.cublaslt import CUDA_R_8F_E4M3, CUDA_R_8F_E5M2, Epilogue, gemm
from llmc.core.gpu.gelu import gelu_backward
from llmc.core.gpu.matmul import bias_backward, finish_unfused, forward_epilogue
from llmc.core.gpu.runtime import (BF16, beside, cdiv, check, check_arrays, current, launch, ptr, rows, scratch,
                                   settle)
from llmc.core.primitives import Fp8

TILE = 64  # kernels/fp8.cu's cast tile
AMAX_THREADS = 256
# the forward's ways, best first: (epilogues fused into the GEMM, fast accumulation); where cuBLASLt has no
# FP8 kernel for one at a shape, the next (unfused: a plain GEMM, then matmul.py's bias and gelu.py's kernels)
FORWARD_WAYS = ((True, True), (True, False), (False, True), (False, False))
_way: dict[tuple, int] = {}  # per call shape: the first way that ran (learnt at its first, eager call)


def _first_that_runs(key: tuple, ways: tuple, run: Callable) -> None:
    if key in _way:
        return run(*ways[_way[key]])
    for i, way in enumerate(ways):
        try:
            run(*way)
        except LlmcError:
            if current().stream.is_capturing() or i + 1 == len(ways):
                raise
            continue
        _way[key] = i
        return


def _check_fp8(op: str, *tensors: Fp8) -> None:
    for t in tensors:
        check_arrays(op, np.uint8, t.data, align=16)
        check_arrays(op, np.float32, t.scale_inv, align=16)  # cuBLASLt's scale pointers
        check(t.scale_inv.size == 1, f"{op}: scale_inv must hold one value")


def quantize_fp8(out, out_t, scale_inv, inp, e5m2=False, gelu=False) -> None:
    """out (R, K) and/or out_t (K, R) = FP8 bits of x * scale, scale = FMT_MAX / amax(x), x = inp or (gelu, E4M3)
    its GELU; scale_inv = 1/scale. R and K multiples of 8, 16-byte aligned arrays."""
    check_arrays("quantize_fp8", BF16, inp, align=16)
    check_arrays("quantize_fp8", np.uint8, out, out_t, align=16)
    check_arrays("quantize_fp8", np.float32, scale_inv)
    R, K = rows(inp)
    check(R % 8 == 0 and K % 8 == 0, f"quantize_fp8: ({R}, {K}) must be multiples of 8")
    check(out is None or out.size == R * K, f"quantize_fp8: out must hold {R}x{K}")
    check(out_t is None or rows(out_t) == (K, R), f"quantize_fp8: out_t must be ({K}, {R})")
    check(not (gelu and e5m2), "quantize_fp8: a GELU's output is a forward operand, E4M3")
    settle(reads=(inp,), writes=(out, out_t, scale_inv))
    packs = R * K // 8
    parts = max(1, min(cdiv(packs, AMAX_THREADS), 2 * current().sms))
    partial = scratch("fp8_amax", parts * 4)
    launch("fp8", "amax_partial_gelu" if gelu else "amax_partial_plain", parts, AMAX_THREADS,
           (partial, inp, np.int64(packs)))
    cast = "cast_transpose_e5m2" if e5m2 else "cast_transpose_e4m3_gelu" if gelu else "cast_transpose_e4m3"
    launch("fp8", cast, (cdiv(K, TILE), cdiv(R, TILE)), 256,
           (ptr(out), ptr(out_t), scale_inv, inp, partial, np.int32(parts), np.int32(R), np.int32(K)))


def matmul_forward_fp8(out, inp, weight, bias, pre_gelu=None, residual=None) -> None:
    """out (N,OC) = inp (N,C) @ weight (OC,C).T scaled, + bias; pre_gelu and residual as matmul_forward's."""
    check_arrays("matmul_forward_fp8", BF16, out, bias, pre_gelu, residual, align=16)
    _check_fp8("matmul_forward_fp8", inp, weight)
    (N, C), (OC, C2) = rows(inp.data), weight.data.shape
    check(C == C2 and rows(out) == (N, OC), f"matmul_forward_fp8: ({N}, {C}) @ {tuple(weight.data.shape)}.T "
                                            f"does not give {tuple(out.shape)}")
    check(residual is None or pre_gelu is None, "matmul_forward_fp8: a residual cannot follow the GELU")
    settle(reads=(inp.data, weight.data, inp.scale_inv, weight.scale_inv, bias, residual), writes=(out, pre_gelu))

    def product(fused: bool, fast: bool) -> None:
        target, epilogue = forward_epilogue(out, bias, pre_gelu, fused)
        gemm(target.data.ptr, inp.data.data.ptr, weight.data.data.ptr, N, OC, C, lda=C, ldb=C, ldd=OC, trans_b=True,
             a_type=CUDA_R_8F_E4M3, b_type=CUDA_R_8F_E4M3, a_scale=inp.scale_inv.data.ptr,
             b_scale=weight.scale_inv.data.ptr, fast_accum=fast, **epilogue,
             beta=0.0 if residual is None else 1.0, c=0 if residual is None else residual.data.ptr)
        if not fused:
            finish_unfused(out, target, bias, pre_gelu)

    _first_that_runs(("forward", N, OC, C, bias is None, pre_gelu is None, residual is None), FORWARD_WAYS, product)


def matmul_backward_fp8(dinp, dweight, dbias, dout, dout8, dout8_t, inp_t, weight_t, pre_gelu=None) -> None:
    """dinp = dout8 @ weight_t.T (times gelu'(pre_gelu)); dweight += dout8_t @ inp_t.T; dbias += sum of dout."""
    check_arrays("matmul_backward_fp8", BF16, dinp, dweight, dbias, dout, pre_gelu, align=16)
    _check_fp8("matmul_backward_fp8", dout8, dout8_t, inp_t, weight_t)
    (N, OC), (C, N2) = rows(dout8.data), inp_t.data.shape
    check(N == N2 and rows(dinp) == (N, C) and dweight.shape == (OC, C) and weight_t.data.shape == (C, OC)
          and rows(dout8_t.data) == (OC, N) and rows(dout) == (N, OC),
          "matmul_backward_fp8: the operands' shapes do not agree")
    check(pre_gelu is None or pre_gelu.shape == dinp.shape, "matmul_backward_fp8: pre_gelu must have dinp's shape")
    settle(reads=(dout, dout8.data, dout8_t.data, inp_t.data, weight_t.data, dout8.scale_inv, dout8_t.scale_inv,
                  inp_t.scale_inv, weight_t.scale_inv, pre_gelu), writes=(dinp, dweight))
    if dbias is not None:
        beside(lambda on: bias_backward(dbias, dout, N, OC, on), reads=(dout,), writes=(dbias,))
    gemm(dweight.data.ptr, dout8_t.data.data.ptr, inp_t.data.data.ptr, OC, C, N, lda=N, ldb=N, ldd=C, trans_b=True,
         beta=1.0, a_type=CUDA_R_8F_E5M2, b_type=CUDA_R_8F_E4M3, a_scale=dout8_t.scale_inv.data.ptr,
         b_scale=inp_t.scale_inv.data.ptr)

    def input_gradient(with_dgelu: bool) -> None:
        gemm(dinp.data.ptr, dout8.data.data.ptr, weight_t.data.data.ptr, N, C, OC, lda=OC, ldb=OC, ldd=C,
             trans_b=True, a_type=CUDA_R_8F_E5M2, b_type=CUDA_R_8F_E4M3, a_scale=dout8.scale_inv.data.ptr,
             b_scale=weight_t.scale_inv.data.ptr, epilogue=Epilogue.DGELU if with_dgelu else Epilogue.DEFAULT,
             aux=pre_gelu.data.ptr if with_dgelu else 0, aux_ld=C if with_dgelu else 0)

    def with_dgelu(fused: bool) -> None:
        input_gradient(fused)
        if not fused:
            gelu_backward(dinp, pre_gelu, dinp)

    if pre_gelu is None:
        return input_gradient(False)
    _first_that_runs(("dgelu", N, C, OC), ((True,), (False,)), with_dgelu)

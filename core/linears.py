"""The transformer blocks' four linear layers (qkv, attention projection, fc, fc projection), as both model
families call them: in the backend's precision (Linears), or in FP8 (Fp8Linears, -f8 1). The output head,
attention, the norms and the optimizer are the model's, in bf16/fp32 either way.

FP8's recipe is per-tensor current scaling (torchao's "tensorwise" float8 training; Transformer Engine's
HYBRID formats): every operand is scaled by FMT_MAX / amax(operand) as it is cast, so no scale outlives its
step (nothing to checkpoint: a resumed run casts exactly as the uninterrupted one). Forward operands are
E4M3 (3 mantissa bits), gradients E5M2 (the range they need); products accumulate in fp32 and leave as bf16
through the bf16 path's epilogues. The forward keeps each layer input transposed in FP8 for its weight
gradient (1 byte an element where the bf16 path keeps 2), except inputs recompute (-r) makes again in the
backward and attention's output, which the model keeps anyway: those are cast again there. A layer whose
dimensions are not multiples of 16 (cuBLASLt's FP8 alignment) stays bf16.
"""

from types import ModuleType

import numpy as np

from llmc.core.primitives import Fp8

NAMES = ("qkv", "attproj", "fc", "fcproj")  # the weights' names in both families' parameters are NAME + "w"
SCALE_ROW = 64  # fp32 elements between two layers' kept scales


class Linears:
    """The linear layers in the backend's own precision: matmul_forward / matmul_backward as they are."""

    def __init__(self, backend: ModuleType):
        self.ops = backend

    def keeps_input(self, name: str) -> bool:
        """Whether the layer keeps its own copy of each layer's input for the backward (the model then
        needs its input only while the forward computes it)."""
        return False

    def forward(self, name: str, l: int, out, inp, weight, bias, pre_gelu=None, residual=None) -> None:
        self.ops.matmul_forward(out, inp, weight, bias, pre_gelu=pre_gelu, residual=residual)

    def backward(self, name: str, l: int, dinp, dweight, dbias, dout, inp, weight, pre_gelu=None) -> None:
        self.ops.matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=pre_gelu)


class Fp8Linears(Linears):
    """The linear layers in FP8. Kept across the step: each kept layer input transposed (C, N) with its scale;
    one layer at a time: the forward's input and weight, the backward's gradient and its transpose, and the
    weight transposed. Weights are cast as each layer runs (a per-layer copy of every weight and its transpose
    would outweigh what FP8 saves on activations at GPT-2 1.5B).

    GPT-2's GELU between fc and fcproj moves into fcproj's cast where both are FP8: fc's GEMM writes only the
    product before the GELU (its bias epilogue, where cuBLASLt's GELU epilogue is the slower one), and fcproj
    casts the GELU of it, taken in fp32 as the cast reads it; the GELU's bf16 output, which nothing else reads,
    is never written."""

    def __init__(self, backend: ModuleType, shapes: dict[str, tuple[int, ...]], N: int, recompute: int):
        super().__init__(backend)
        xp, u8, f32 = backend.xp, np.uint8, np.float32
        dims = {name: shapes[name + "w"] for name in NAMES}  # (L, OC, C)
        self.fp8 = {name for name, (_, OC, C) in dims.items() if N % 16 == 0 and OC % 16 == 0 and C % 16 == 0}
        recomputed = ({"fcproj"} if recompute >= 1 else set()) | ({"qkv", "fc"} if recompute >= 2 else set())
        # attproj's input is attention's output, which the model keeps for attention's backward: cast again there
        self.kept = self.fp8 - recomputed - {"attproj"}
        self.x_t = {n: xp.zeros((L if n in self.kept else 1, C, N), u8) for n, (L, OC, C) in dims.items()
                    if n in self.fp8}  # (L or 1, C, N)
        # each layer's scale in a 256-byte row of its own: cuBLASLt refuses a scale pointer that is only 4-byte
        # aligned (CUBLAS_STATUS_NOT_SUPPORTED)
        self.x_scale_inv = {n: xp.zeros((len(self.x_t[n]), SCALE_ROW), f32) for n in self.fp8}
        widest_in = max((dims[n][2] for n in self.fp8), default=0)
        widest_out = max((dims[n][1] for n in self.fp8), default=0)
        widest_weight = max((dims[n][1] * dims[n][2] for n in self.fp8), default=0)
        self.x8 = xp.zeros(N * widest_in, u8)  # the forward's input, row-major (its scale is its transpose's)
        self.d8, self.d8_t = xp.zeros(N * widest_out, u8), xp.zeros(N * widest_out, u8)
        self.w8, self.w_scale_inv = xp.zeros(widest_weight, u8), xp.zeros(1, f32)  # (OC, C) or (C, OC)
        self.d8_scale_inv = xp.zeros(1, f32)
        self.gelu_of: tuple[int, object] | None = None  # (layer, fc's output before the GELU) for fcproj's cast

    def keeps_input(self, name: str) -> bool:
        return name in self.kept

    def _input_t(self, name: str, l: int) -> Fp8:
        i = l if name in self.kept else 0
        return Fp8(self.x_t[name][i], self.x_scale_inv[name][i, :1])

    def _weight(self, weight, transposed: bool) -> Fp8:
        """The layer's weight (OC, C) in E4M3, or its transpose (C, OC)."""
        OC, C = weight.shape
        w8 = self.w8[: weight.size].reshape((C, OC) if transposed else (OC, C))
        self.ops.quantize_fp8(None if transposed else w8, w8 if transposed else None, self.w_scale_inv, weight)
        return Fp8(w8, self.w_scale_inv)

    def forward(self, name: str, l: int, out, inp, weight, bias, pre_gelu=None, residual=None) -> None:
        if name not in self.fp8:
            return super().forward(name, l, out, inp, weight, bias, pre_gelu, residual)
        C = inp.shape[-1]
        x8 = self.x8[: inp.size].reshape(-1, C)
        # fcproj's input is the GELU of what fc left in pre_gelu (see the class docstring)
        gelu = name == "fcproj" and self.gelu_of is not None and self.gelu_of[0] == l
        source, self.gelu_of = (self.gelu_of[1] if gelu else inp), None
        # the transpose is kept for the backward's weight gradient; an input not kept is cast again there
        x_t = self._input_t(name, l)
        self.ops.quantize_fp8(x8, x_t.data if name in self.kept else None, x_t.scale_inv, source, gelu=gelu)
        if name == "fc" and pre_gelu is not None and "fcproj" in self.fp8:
            out, pre_gelu, self.gelu_of = pre_gelu, None, (l, pre_gelu)
        self.ops.matmul_forward_fp8(out, Fp8(x8, x_t.scale_inv), self._weight(weight, transposed=False), bias,
                                    pre_gelu=pre_gelu, residual=residual)

    def backward(self, name: str, l: int, dinp, dweight, dbias, dout, inp, weight, pre_gelu=None) -> None:
        if name not in self.fp8:
            return super().backward(name, l, dinp, dweight, dbias, dout, inp, weight, pre_gelu)
        OC = dout.shape[-1]
        d8, d8_t = self.d8[: dout.size].reshape(-1, OC), self.d8_t[: dout.size].reshape(OC, -1)
        self.ops.quantize_fp8(d8, d8_t, self.d8_scale_inv, dout, e5m2=True)
        x_t = self._input_t(name, l)
        if name not in self.kept:  # recomputed by the model, or kept by it: cast again, transposed
            self.ops.quantize_fp8(None, x_t.data, x_t.scale_inv, inp)
        self.ops.matmul_backward_fp8(dinp, dweight, dbias, dout, Fp8(d8, self.d8_scale_inv),
                                     Fp8(d8_t, self.d8_scale_inv), x_t, self._weight(weight, transposed=True),
                                     pre_gelu=pre_gelu)


def make_linears(backend: ModuleType, fp8: bool, shapes: dict[str, tuple[int, ...]], N: int,
                 recompute: int) -> Linears:
    """The linear layers of a model with parameter shapes `shapes` at N = B*T positions."""
    return Fp8Linears(backend, shapes, N, recompute) if fp8 else Linears(backend)

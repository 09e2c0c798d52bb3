"""The primitive set every backend implements: `llmc.core.cpu` (NumPy, fp32, the reference) and
`llmc.core.gpu` (CuPy, bf16). The model and training loop in `llmc.core` are written once
against this set; a backend is a module providing exactly these names with these signatures
(tests/core/test_primitives.py checks both).

Conventions, as llm.c: outputs first, then inputs. Parameter gradients accumulate (`+=`),
activation gradients overwrite (`=`), except `layernorm_backward`'s dinp, which accumulates into
the residual-stream gradient that every block shares (the residual's own backward is the
identity, so the loop needs no residual_backward). Arrays are the backend's (numpy.ndarray or
cupy.ndarray): parameters, gradients and activations in `act_dtype` (fp32 on CPU, bf16 on GPU),
layernorm statistics, losses and optimizer state always fp32, tokens int32.
Shapes: B batch, T time, C channels, OC output channels, NH heads, V vocab, Vp padded vocab.
"""

from dataclasses import dataclass
from typing import Any, Callable, Protocol

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True)
class AdamW:
    """One AdamW update's hyperparameters; the defaults are train_gpt2.cu's."""
    lr: float
    weight_decay: float = 0.0  # decoupled, on the spans adamw_update is given
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8


# The largest finite values of the two FP8 formats (OCP's E4M3 "fn", which has no infinities, and E5M2)
E4M3_MAX, E5M2_MAX = 448.0, 57344.0
AMAX_FLOOR = 1e-12  # an all-zero tensor's amax, so its scale stays finite (torchao's EPS)


@dataclass(frozen=True)
class Fp8:
    """A tensor in FP8 with its per-tensor scale: data (uint8, the E4M3 or E5M2 bit patterns) holds
    x * scale rounded to nearest and saturated, scale = FMT_MAX / amax(x); scale_inv (1,) fp32 = 1/scale,
    what a GEMM multiplies its product by. Forward operands are E4M3, gradients E5M2 (Transformer Engine's
    HYBRID format)."""
    data: Array
    scale_inv: Array


class Primitives(Protocol):
    # ------------------------------------------------------------------ backend description
    name: str  # "cpu" or "gpu"
    xp: Any  # the array module: numpy or cupy
    act_dtype: Any  # dtype of parameters, gradients and activations
    asynchronous: bool  # calls return before their work is done (GPU: queued on a stream)

    def to_device(self, host: Array, dtype: Any = None) -> Array:
        """Copy a NumPy array to the backend (converting to dtype, default: same dtype)."""

    def to_host(self, arr: Array) -> Array:
        """Copy to a NumPy array; bf16 becomes fp32."""

    def synchronize(self) -> None:
        """Wait for all queued work (no-op on CPU)."""

    def fetch(self, *arrays: Array) -> Callable[[], list[Any]]:
        """Queue copies of the arrays to the host at this point of the work; the returned callable
        waits for them and gives NumPy arrays of the arrays' dtypes. Later work may overwrite the
        arrays meanwhile (the loop reads a step's losses back while the next step runs)."""

    def graph(self, fn: Callable[[], None]) -> Callable[[], None]:
        """A callable doing what fn() does. The GPU captures fn once as a CUDA graph and replays it,
        so fn must only launch work on preallocated buffers (no allocation, no read-back); the CPU
        returns fn itself."""

    def promised_flops(self) -> float | None:
        """The dense bf16 FLOP/s the device promises, llm.c's MFU denominator (-1 for an unknown GPU);
        None where there is no bf16 MFU to report (the CPU)."""

    def device_name(self) -> str:
        """What the backend runs on, for the run's record (config.json): the CPU's or GPU's model name."""

    def memory_usage(self) -> tuple[int, int] | None:
        """(in use, total) device memory in bytes, as llm.c reports it (cudaMemGetInfo's total - free, and
        total); None on the CPU, whose memory the process's RSS tells."""

    def first_run_note(self) -> str | None:
        """One line for the trainer to print before a first step that will tune and compile for a while
        (a GPU its tuning cache holds nothing for); None when the start is quick."""

    def attention_stats_shape(self, B: int, T: int, NH: int) -> tuple[int, ...]:
        """Shape of the fp32 state attention_forward saves for backward
        (CPU: the attention probabilities (B, NH, T, T); GPU: softmax log-sum-exp (B, NH, T))."""

    # ------------------------------------------------------------------ the layers
    def encoder_forward(self, out: Array, inp: Array, wte: Array, wpe: Array | None) -> None:
        """out (B,T,C) = wte[inp] + wpe[:T]; inp (B,T) int32. Without wpe (Llama: RoPE instead), wte[inp]."""

    def encoder_backward(self, dwte: Array, dwpe: Array | None, dout: Array, inp: Array) -> None:
        """dwte[inp] += dout; dwpe[:T] += dout summed over B (when given)."""

    def layernorm_forward(self, out: Array, mean: Array, rstd: Array, inp: Array, weight: Array, bias: Array) -> None:
        """out (B,T,C) = (inp - mean) * rstd * weight + bias, eps 1e-5; saves mean, rstd (B,T)."""

    def layernorm_backward(self, dinp: Array, dweight: Array, dbias: Array, dout: Array, inp: Array,
                           weight: Array, mean: Array, rstd: Array, dproj_bias: Array | None = None) -> None:
        """dinp += dL/dinp; dweight += ...; dbias += ... (all accumulate). dinp is the residual stream's
        gradient: with dproj_bias, also dproj_bias += the updated dinp summed over (B,T), the bias
        gradient of the projection whose output was added into that residual."""

    def rmsnorm_forward(self, out: Array, rstd: Array, inp: Array, weight: Array, eps: float) -> None:
        """out (B,T,C) = inp * rstd * weight with rstd (B,T) = 1 / sqrt(mean(inp^2) + eps), saved (Llama)."""

    def rmsnorm_backward(self, dinp: Array, dweight: Array, dout: Array, inp: Array, weight: Array,
                         rstd: Array) -> None:
        """dinp += dL/dinp (the residual stream's gradient, as layernorm_backward's); dweight += ..."""

    def matmul_forward(self, out: Array, inp: Array, weight: Array, bias: Array | None,
                       pre_gelu: Array | None = None, residual: Array | None = None) -> None:
        """out (N,OC) = inp (N,C) @ weight(OC,C).T + bias(OC) (N = B*T; bias may be None).
        With pre_gelu: pre_gelu = that product and out = gelu(pre_gelu) (the fused epilogue).
        With residual (N,OC) (not with pre_gelu): out = residual + that product (the residual add)."""

    def matmul_backward(self, dinp: Array, dweight: Array, dbias: Array | None, dout: Array, inp: Array,
                        weight: Array, pre_gelu: Array | None = None) -> None:
        """dinp (N,C) = dout (N,OC) @ weight; dweight += dout.T @ inp; dbias += dout summed over N.
        With pre_gelu (inp was gelu(pre_gelu)): dinp is then multiplied by gelu'(pre_gelu), giving
        the gradient with respect to pre_gelu."""

    def quantize_fp8(self, out: Array | None, out_t: Array | None, scale_inv: Array, inp: Array,
                     e5m2: bool = False, gelu: bool = False) -> None:
        """Per-tensor current scaling of x = inp (R, K) (torchao's tensorwise recipe): scale = FMT_MAX /
        max(amax(x), AMAX_FLOOR) in fp32, out (R, K) uint8 = fp8(x * scale) and out_t (K, R) its transpose
        (either may be None), E4M3 or, with e5m2, E5M2, rounded to nearest even and saturated to +-FMT_MAX;
        scale_inv (1,) fp32 = 1 / scale. With gelu (E4M3), x = gelu_forward's GELU of inp, taken in fp32 as
        it is cast: the fc layer's output before its GELU becomes fcproj's input with no bf16 copy between."""

    def matmul_forward_fp8(self, out: Array, inp: Fp8, weight: Fp8, bias: Array | None,
                           pre_gelu: Array | None = None, residual: Array | None = None) -> None:
        """matmul_forward from E4M3 operands: out (N,OC) = (inp.data (N,C) @ weight.data (OC,C).T) *
        inp.scale_inv * weight.scale_inv + bias, accumulated in fp32, with matmul_forward's GELU and residual."""

    def matmul_backward_fp8(self, dinp: Array, dweight: Array, dbias: Array | None, dout: Array, dout8: Fp8,
                            dout8_t: Fp8, inp_t: Fp8, weight_t: Fp8, pre_gelu: Array | None = None) -> None:
        """matmul_backward from FP8 operands, accumulated in fp32: dinp (N,C) = dout8 (N,OC, E5M2) @
        weight_t (C,OC, E4M3).T (times gelu'(pre_gelu) if given); dweight (OC,C) += dout8_t (OC,N, E5M2) @
        inp_t (C,N, E4M3).T; dbias += dout (N,OC, the unquantized gradient) summed over N. Each product is
        scaled by its operands' scale_inv."""

    def gelu_forward(self, out: Array, inp: Array) -> None:
        """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def gelu_backward(self, dinp: Array, inp: Array, dout: Array) -> None:
        """dinp = gelu'(inp) * dout (dinp may be dout itself)."""

    def attention_forward(self, out: Array, stats: Array, qkv: Array, num_heads: int,
                          num_kv_heads: int | None = None) -> None:
        """Causal multi-head attention, scale 1/sqrt(HS). qkv (B,T,(NH+2*NKV)*HS) holds the NH query
        heads, then NKV key heads, then NKV value heads (NKV = num_kv_heads, default NH: GPT-2's (B,T,3C));
        query head h attends with key/value head h // (NH/NKV) (grouped-query attention). out (B,T,NH*HS);
        stats (attention_stats_shape) is saved for backward."""

    def attention_backward(self, dqkv: Array, dout: Array, qkv: Array, out: Array, stats: Array,
                           num_heads: int, num_kv_heads: int | None = None) -> None:
        """dqkv (B,T,(NH+2*NKV)*HS) = gradient of attention_forward given dout (B,T,NH*HS)."""

    def rope_forward(self, out: Array, inp: Array, freqs_cis: Array, num_heads: int, num_kv_heads: int) -> None:
        """Rotary position embedding of the query and key heads of a qkv tensor (B,T,(NH+2*NKV)*HS), laid
        out as attention_forward's; the value heads are copied. Each head's channel pair (2i, 2i+1) at
        position t turns by the angle whose (cos, sin) is freqs_cis[t, i] ((maxT, HS/2, 2) fp32, Llama 3's
        table with its scaling applied): (x0 cos - x1 sin, x0 sin + x1 cos). out may not be inp."""

    def rope_backward(self, dinp: Array, dout: Array, freqs_cis: Array, num_heads: int, num_kv_heads: int) -> None:
        """dinp (B,T,(NH+2*NKV)*HS) = gradient of rope_forward given dout: each pair turned back."""

    def swiglu_forward(self, out: Array, inp: Array) -> None:
        """out (B,T,H) = inp[..., :H] * silu(inp[..., H:]) for inp (B,T,2H): Llama's MLP, c_fc's and c_fc2's
        outputs side by side as llm.c fuses them; silu(x) = x * sigmoid(x)."""

    def swiglu_backward(self, dinp: Array, inp: Array, dout: Array) -> None:
        """dinp (B,T,2H) = gradient of swiglu_forward given dout (B,T,H)."""

    def softmax_crossentropy(self, losses: Array, logits: Array, targets: Array, vocab_size: int,
                             dloss: float | None = None) -> None:
        """losses (B,T) fp32 = -log softmax(logits[..., :V])[target]; logits (B,T,Vp).
        With dloss (the gradient of the mean loss per position, 1/(B*T*grad_accum)): logits are
        overwritten in place with dlogits = (softmax - onehot) * dloss, padded columns zero."""

    # ------------------------------------------------------------------ the optimizer
    def global_norm_squared(self, out: Array, grads: Array) -> None:
        """out (1,) fp32 = sum of grads**2 (grads flat); the host takes its square root."""

    def adamw_update(self, param: Array, grad: Array, m: Array, v: Array, master: Array | None, *, hp: AdamW,
                     step: int, grad_scale: float = 1.0, seed: int = 0,
                     decayed: tuple[tuple[int, int], ...] | None = None, norm_squared: Array | None = None,
                     max_norm: float = 1.0) -> None:
        """One AdamW step (step counts from 1) over flat arrays (the whole model in one call); grad is
        multiplied by grad_scale first (clipping). hp.weight_decay applies to the elements of the
        [start, stop) spans in decayed (all elements when None). m, v (and master, the fp32 weights
        when param is bf16) are fp32. Without master, a bf16 param is written with stochastic
        rounding, its random bits a function of (element index, seed). With norm_squared (1,) fp32,
        the squared global gradient norm as the backend holds it, the gradient is also clipped to
        max_norm, and a non-finite norm leaves everything unchanged: the update can be queued
        before the host reads the norm."""


REQUIRED_OPS = tuple(name for name in Primitives.__dict__
                     if not name.startswith("_") and callable(Primitives.__dict__[name]))

# Where each op lives: op -> (CPU module, GPU module, the GPU kernel files it launches, what else does
# the work on the GPU). Paths are under core/; tests/core/test_primitives.py keeps the table true.
PRIMITIVE_MAP: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "encoder_forward": ("cpu/layers.py", "gpu/encoder.py", ("encoder.cu",), ""),
    "encoder_backward": ("cpu/layers.py", "gpu/encoder.py", ("encoder.cu",), ""),
    "layernorm_forward": ("cpu/layers.py", "gpu/layernorm.py", ("layernorm.cu",), ""),
    "layernorm_backward": ("cpu/layers.py", "gpu/layernorm.py", ("layernorm.cu",), ""),
    "matmul_forward": ("cpu/layers.py", "gpu/matmul.py", ("matmul.cu",),
                       "cuBLASLt (gpu/cublaslt.py) with its bias/GELU epilogues; bias+GELU also cuDNN "
                       "(gpu/gelu_gemm.py); where an epilogue refuses the alignment, gelu.py's kernels after"),
    "matmul_backward": ("cpu/layers.py", "gpu/matmul.py", ("matmul.cu",),
                        "cuBLASLt (gpu/cublaslt.py); dGELU by its epilogue or gelu.py's kernel"),
    "quantize_fp8": ("cpu/fp8.py", "gpu/fp8.py", ("fp8.cu",), ""),
    "matmul_forward_fp8": ("cpu/fp8.py", "gpu/fp8.py", (), "cuBLASLt's FP8 GEMMs (gpu/cublaslt.py) with the bf16 "
                           "path's epilogues"),
    "matmul_backward_fp8": ("cpu/fp8.py", "gpu/fp8.py", (), "cuBLASLt's FP8 GEMMs (gpu/cublaslt.py); "
                            "the bias gradient by matmul.py's kernels (matmul.cu) from the bf16 gradient"),
    "gelu_forward": ("cpu/layers.py", "gpu/gelu.py", ("gelu.cu",), ""),
    "gelu_backward": ("cpu/layers.py", "gpu/gelu.py", ("gelu.cu",), ""),
    "attention_forward": ("cpu/layers.py", "gpu/attention.py", ("attention.cu",),
                          "cuDNN SDPA; where cuDNN declines, cuBLASLt batched matmuls"),
    "attention_backward": ("cpu/layers.py", "gpu/attention.py", ("attention.cu",),
                           "cuDNN SDPA; where cuDNN declines, cuBLASLt batched matmuls"),
    "softmax_crossentropy": ("cpu/layers.py", "gpu/classifier.py", ("classifier.cu",), ""),
    "rmsnorm_forward": ("cpu/layers.py", "gpu/rmsnorm.py", ("rmsnorm.cu",), ""),
    "rmsnorm_backward": ("cpu/layers.py", "gpu/rmsnorm.py", ("rmsnorm.cu",), ""),
    "rope_forward": ("cpu/layers.py", "gpu/rope.py", ("rope.cu",), ""),
    "rope_backward": ("cpu/layers.py", "gpu/rope.py", ("rope.cu",), ""),
    "swiglu_forward": ("cpu/layers.py", "gpu/swiglu.py", ("swiglu.cu",), ""),
    "swiglu_backward": ("cpu/layers.py", "gpu/swiglu.py", ("swiglu.cu",), ""),
    "global_norm_squared": ("cpu/optimizer.py", "gpu/optimizer.py", ("global_norm.cu",), ""),
    "adamw_update": ("cpu/optimizer.py", "gpu/optimizer.py", ("adamw.cu",), ""),
}

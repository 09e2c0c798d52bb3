"""The GPU backend: CuPy, bf16 activations/parameters/gradients, fp32 optimizer state; cuBLASLt
(nvmath-python) matmuls (the MLP's GELU one through cuDNN where that is faster), cuDNN flash attention
(nvidia-cudnn-frontend, with a plain fallback; grouped-query too) and llmc's own CUDA kernels
(core/gpu/kernels), Llama 3's RMSNorm, RoPE and SwiGLU among them; FP8 GEMMs (-f8 1) on Hopper.
Implements core/primitives.py. Importing it without CuPy raises LlmcError (never a silent fall back to
the CPU) and touches no GPU: runtime.init(device) takes one (core.backends.get_backend does) and says
so in one line where there is none."""

from llmc.core.gpu.runtime import (BF16, cp, device_name, fetch, graph, memory_usage,  # runtime first:
                                   promised_flops, synchronize, to_device, to_host)  # it checks for CuPy
from llmc.core.gpu.attention import attention_backward, attention_forward, attention_stats_shape
from llmc.core.gpu.classifier import softmax_crossentropy
from llmc.core.gpu.encoder import encoder_backward, encoder_forward
from llmc.core.gpu.fp8 import matmul_backward_fp8, matmul_forward_fp8, quantize_fp8
from llmc.core.gpu.gelu import gelu_backward, gelu_forward
from llmc.core.gpu.layernorm import layernorm_backward, layernorm_forward
from llmc.core.gpu.matmul import matmul_backward, matmul_forward
from llmc.core.gpu.optimizer import adamw_update, global_norm_squared
from llmc.core.gpu.rmsnorm import rmsnorm_backward, rmsnorm_forward
from llmc.core.gpu.rope import rope_backward, rope_forward
from llmc.core.gpu.swiglu import swiglu_backward, swiglu_forward
from llmc.core.gpu.tuning_cache import first_run_note

name = "gpu"
xp = cp
act_dtype = BF16
asynchronous = True

__all__ = ["name", "xp", "act_dtype", "asynchronous", "to_device", "to_host", "synchronize", "fetch", "graph",
           "promised_flops", "device_name", "memory_usage", "first_run_note",
           "attention_stats_shape",
           "encoder_forward", "encoder_backward", "layernorm_forward",
           "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward", "matmul_forward", "matmul_backward",
           "gelu_forward", "gelu_backward", "attention_forward", "attention_backward",
           "rope_forward", "rope_backward", "swiglu_forward", "swiglu_backward", "softmax_crossentropy",
           "quantize_fp8", "matmul_forward_fp8", "matmul_backward_fp8", "global_norm_squared", "adamw_update"]

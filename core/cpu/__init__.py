"""The CPU backend: fp32 NumPy, llm.c's train_gpt2.c. Implements core/primitives.py."""

import os
import platform
from typing import Callable

import numpy as np

from llmc.core.cpu.layers import (attention_backward, attention_forward, attention_stats_shape,
                                  encoder_backward, encoder_forward, gelu_backward, gelu_forward,
                                  layernorm_backward, layernorm_forward, matmul_backward, matmul_forward,
                                  rmsnorm_backward, rmsnorm_forward, rope_backward, rope_forward,
                                  softmax_crossentropy, swiglu_backward, swiglu_forward)
from llmc.core.cpu.fp8 import matmul_backward_fp8, matmul_forward_fp8, quantize_fp8
from llmc.core.cpu.optimizer import adamw_update, global_norm_squared

name = "cpu"
xp = np
act_dtype = np.float32
asynchronous = False


def to_device(host, dtype=None):
    return np.array(host, dtype=dtype or np.asarray(host).dtype)


def to_host(arr):
    # a copy, as the GPU's: a caller may keep it while the model overwrites the array (a step's gradients)
    return np.array(arr, dtype=np.float32) if arr.dtype.kind == "f" else np.array(arr)


def synchronize():
    pass


def fetch(*arrays):
    copies = [np.array(a) for a in arrays]
    return lambda: copies


def graph(fn: Callable[[], None]) -> Callable[[], None]:
    return fn


def promised_flops() -> float | None:
    return None  # no bf16 tensor cores: the step line has no MFU


def device_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def memory_usage() -> None:
    return None


def first_run_note() -> None:
    return None  # nothing is tuned on the CPU


__all__ = ["name", "xp", "act_dtype", "asynchronous", "to_device", "to_host", "synchronize", "fetch", "graph",
           "promised_flops", "device_name", "memory_usage", "first_run_note",
           "attention_stats_shape",
           "encoder_forward", "encoder_backward", "layernorm_forward",
           "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward", "matmul_forward", "matmul_backward",
           "gelu_forward", "gelu_backward", "swiglu_forward", "swiglu_backward", "attention_forward",
           "attention_backward", "rope_forward", "rope_backward", "softmax_crossentropy",
           "quantize_fp8", "matmul_forward_fp8", "matmul_backward_fp8", "global_norm_squared", "adamw_update"]

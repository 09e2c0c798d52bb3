"""llm.c's Llama 3 files (llama3 branch): the model file that train_llama3.py's write_model writes and
train_llama3.cu reads, and the debug state of write_state + write_training_history that test_llama3.cu
checks against.

Model file: 256 int32 [magic 20240803, version 3 fp32 | 5 bf16, maxT, V, L, NH, NKV, C, multiple_of,
use_scaled_rope, major, minor], 256 float32 [ffn_dim_multiplier, norm_eps, rope_theta], then the
tensors of llama_config.param_shapes. Debug state: 256 int32 [magic, 3, B, T, n], x and y (B, T) int32,
logits (B, T, V), loss and the grads in parameter order as float32, then n losses and n grad norms.
Checks, errors and atomic writes as core/formats.py's.
"""

import os
from dataclasses import dataclass

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.formats import (HEADER_BYTES, HEADER_INTS, MODEL_BF16, MODEL_FP32, DebugState, atomic_write,
                               check_size, make_header, read_header, read_model_params, write_model_file)
from llmc.core.llama_config import LlamaConfig, num_parameters

LLAMA3_MAGIC = 20240803  # model files and debug states alike
STATE_VERSION = 3
MODEL_HEADERS_BYTES = 2 * HEADER_BYTES  # the int32 header, then the float32 one


# ----------------------------------------------------------------------------- model files

def model_headers(cfg: LlamaConfig, version: int) -> bytes:
    ints = make_header(LLAMA3_MAGIC, version, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers, cfg.num_heads,
                       cfg.num_kv_heads, cfg.channels, cfg.multiple_of, int(cfg.use_scaled_rope),
                       cfg.version_major, cfg.version_minor)
    floats = np.zeros(HEADER_INTS, dtype="<f4")
    floats[:3] = cfg.ffn_dim_multiplier, cfg.norm_eps, cfg.rope_theta
    return ints.tobytes() + floats.tobytes()


def read_model_config(path: str | os.PathLike) -> tuple[LlamaConfig, int]:
    """The config and version (3 = fp32, 5 = bf16) of a Llama 3 model file."""
    h = read_header(path, LLAMA3_MAGIC, (MODEL_FP32, MODEL_BF16), "Llama 3 model")
    check_size(path, MODEL_HEADERS_BYTES, "Llama 3 model", at_least=True)
    f = np.fromfile(path, dtype="<f4", count=HEADER_INTS, offset=HEADER_BYTES)
    try:
        cfg = LlamaConfig(max_seq_len=int(h[2]), vocab_size=int(h[3]), num_layers=int(h[4]), num_heads=int(h[5]),
                          num_kv_heads=int(h[6]), channels=int(h[7]), multiple_of=int(h[8]),
                          ffn_dim_multiplier=float(f[0]), norm_eps=float(f[1]), rope_theta=float(f[2]),
                          use_scaled_rope=bool(h[9]), version_major=int(h[10]), version_minor=int(h[11]))
    except LlmcError as e:
        raise LlmcError(f"{path}: bad model header: {e}") from None
    return cfg, int(h[1])


def read_model(path: str | os.PathLike) -> tuple[LlamaConfig, np.ndarray]:
    """A Llama 3 model file as (config, flat fp32 parameters in llm.c order); bf16 is upcast."""
    cfg, version = read_model_config(path)
    return cfg, read_model_params(path, MODEL_HEADERS_BYTES, num_parameters(cfg), version, "Llama 3 model")


def write_model(path: str | os.PathLike, cfg: LlamaConfig, params: np.ndarray, dtype: str = "fp32") -> None:
    """Flat parameters (llm.c order) as train_llama3.py's write_model writes them: v3 fp32 or v5 bf16
    (round to nearest even, as torch's .to(torch.bfloat16))."""
    write_model_file(path, params, num_parameters(cfg), dtype, lambda version: model_headers(cfg, version))


# ----------------------------------------------------------------------------- debug states

@dataclass
class LlamaDebugState(DebugState):
    """write_state's batch, logits, loss and grads; ref_losses and ref_norms are write_training_history's
    per-step losses and grad norms, both None for a state without history."""
    ref_norms: np.ndarray | None = None


def read_debug_state(path: str | os.PathLike, cfg: LlamaConfig) -> LlamaDebugState:
    h = read_header(path, LLAMA3_MAGIC, (STATE_VERSION,), "Llama 3 debug state")
    B, T, steps = int(h[2]), int(h[3]), int(h[4])
    if B < 1 or T < 1 or steps < 0:
        raise LlmcError(f"{path}: debug state has B={B}, T={T} and {steps} history steps; B, T must be >= 1, steps >= 0")
    if T > cfg.max_seq_len:
        raise LlmcError(f"{path}: debug state has T={T}, beyond the model's max sequence length {cfg.max_seq_len}")
    V = cfg.vocab_size
    counts = [B * T, B * T, B * T * V, 1, num_parameters(cfg), steps, steps]
    check_size(path, HEADER_BYTES + 4 * sum(counts), "Llama 3 debug state")
    data = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    x, y, logits, loss, grads, losses, norms = np.split(data, np.cumsum(counts)[:-1])
    x, y = x.view("<i4").reshape(B, T), y.view("<i4").reshape(B, T)
    if min(x.min(), y.min()) < 0 or max(x.max(), y.max()) >= V:
        raise LlmcError(f"{path}: token ids outside the model's vocab ({V}); does the state belong to this model?")
    history = (losses, norms) if steps else (None, None)
    return LlamaDebugState(x, y, logits.reshape(B, T, V), float(loss[0]), grads, *history)


def write_debug_state(path: str | os.PathLike, state: LlamaDebugState) -> None:
    """The state as write_state, and with ref_losses/ref_norms as write_training_history amends it."""
    losses, norms = state.ref_losses, state.ref_norms
    if (losses is None) != (norms is None) or (losses is not None and len(losses) != len(norms)):
        raise LlmcError(f"{path}: a training history needs as many grad norms as losses")
    steps = 0 if losses is None else len(losses)
    history = [] if losses is None else [(losses, "<f4"), (norms, "<f4")]
    B, T = state.inputs.shape
    with atomic_write(path) as f:
        f.write(make_header(LLAMA3_MAGIC, STATE_VERSION, B, T, steps).tobytes())
        for array, dtype in [(state.inputs, "<i4"), (state.targets, "<i4"), (state.logits, "<f4"),
                             ([state.loss], "<f4"), (state.grads, "<f4"), *history]:
            f.write(np.ascontiguousarray(array, dtype=dtype).tobytes())

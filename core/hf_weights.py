"""GPT-2 weights between Hugging Face (config.json + model.safetensors) and llm.c's flat parameters.

No PyTorch: tensors are read and written with safetensors' NumPy API. HF's GPT-2 keeps its four matmul
weights in Conv1D layout (in, out); llm.c stores (out, in), so those are transposed both ways. llm.c
pads wte to Vp rows with zeros; HF has exactly V rows and ties lm_head to wte. load_hf takes a local
folder, a GPT-2 name or a hub repo id: core/hub.py finds its files.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmc.core.config import GPT2_EOT, GPTConfig, pad_vocab, param_shapes
from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write
from llmc.core.hub import _read_json, resolve_source

# llm.c tensor -> (HF tensor, without the "transformer." prefix; whether HF stores it transposed)
HF_NAMES = {
    "wte": ("wte.weight", False),
    "wpe": ("wpe.weight", False),
    "ln1w": ("h.{l}.ln_1.weight", False),
    "ln1b": ("h.{l}.ln_1.bias", False),
    "qkvw": ("h.{l}.attn.c_attn.weight", True),
    "qkvb": ("h.{l}.attn.c_attn.bias", False),
    "attprojw": ("h.{l}.attn.c_proj.weight", True),
    "attprojb": ("h.{l}.attn.c_proj.bias", False),
    "ln2w": ("h.{l}.ln_2.weight", False),
    "ln2b": ("h.{l}.ln_2.bias", False),
    "fcw": ("h.{l}.mlp.c_fc.weight", True),
    "fcb": ("h.{l}.mlp.c_fc.bias", False),
    "fcprojw": ("h.{l}.mlp.c_proj.weight", True),
    "fcprojb": ("h.{l}.mlp.c_proj.bias", False),
    "lnfw": ("ln_f.weight", False),
    "lnfb": ("ln_f.bias", False),
}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints
PREFIX = "transformer."


# ----------------------------------------------------------------------------- configs

def config_from_hf(hf: dict, where: str = "config.json") -> GPTConfig:
    """llm.c's config for a HF GPT-2 config; refuses what llm.c's architecture cannot express."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise LlmcError(f"{where}: model_type {hf.get('model_type')!r} is not gpt2")
    try:
        V, maxT, L, NH, C = (int(hf[k]) for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"))
    except (KeyError, TypeError, ValueError) as e:
        raise LlmcError(f"{where}: missing or bad GPT-2 size field {e}") from None
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": not math.isclose(hf.get("layer_norm_epsilon", 1e-5), 1e-5),
        "n_inner": hf.get("n_inner") not in (None, 4 * C),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": bool(hf.get("add_cross_attention", False)),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [f"{k}={hf.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise LlmcError(f"{where}: llm.c's GPT-2 cannot express {', '.join(bad)}")
    return GPTConfig(max_seq_len=maxT, vocab_size=V, padded_vocab_size=pad_vocab(V), num_layers=L,
                     num_heads=NH, channels=C)


def hf_config(cfg: GPTConfig) -> dict:
    """A transformers GPT2Config (as config.json) for llm.c's model: no dropout, as llm.c."""
    eot = GPT2_EOT if cfg.vocab_size > GPT2_EOT else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.channels, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "use_cache": True,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tensors

def hf_to_llmc(cfg: GPTConfig, get: Callable[[str], np.ndarray]) -> np.ndarray:
    """Flat fp32 llm.c parameters from HF tensors; get(name) returns the tensor called
    name (without the "transformer." prefix). Works for gradients too."""
    shapes = param_shapes(cfg)
    flat = np.empty(sum(math.prod(s) for s in shapes.values()), dtype=np.float32)
    n_tensors = sum(cfg.num_layers if "{l}" in template else 1 for template, _ in HF_NAMES.values())
    pos = 0
    # reading gpt2-xl's 6 GB takes a while: a bar per tensor (silent when stderr is not a terminal)
    with tqdm(total=n_tensors, desc="reading tensors", unit="tensor", leave=False, disable=None) as bar:
        for name, shape in shapes.items():
            template, transposed = HF_NAMES[name]
            if name == "wte":
                shape = (cfg.vocab_size, cfg.channels)  # HF has V rows; the rest of Vp are zeros here
            tensors = ([(template.format(l=l), shape[1:]) for l in range(cfg.num_layers)] if "{l}" in template
                       else [(template, shape)])
            for hf_name, want in tensors:
                t = np.asarray(get(hf_name))
                hf_shape = want[::-1] if transposed else want
                if t.shape != hf_shape:
                    raise LlmcError(f"tensor {hf_name} has shape {t.shape}, the config needs {hf_shape}")
                flat[pos: pos + t.size] = (t.T if transposed else t).reshape(-1)
                pos += t.size
                bar.update()
            if name == "wte":
                n_pad = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels
                flat[pos: pos + n_pad] = 0.0
                pos += n_pad
    return flat


def llmc_to_hf(cfg: GPTConfig, flat: np.ndarray) -> dict[str, np.ndarray]:
    """HF tensors (names as GPT2LMHeadModel.save_pretrained writes them) from flat llm.c parameters;
    wte loses its padded rows."""
    out, pos = {}, 0
    for name, shape in param_shapes(cfg).items():
        block = flat[pos: pos + math.prod(shape)].reshape(shape)
        pos += block.size
        template, transposed = HF_NAMES[name]
        if name == "wte":
            block = block[: cfg.vocab_size]
        tensors = enumerate(block) if "{l}" in template else [(None, block)]
        for l, t in tensors:
            out[PREFIX + template.format(l=l)] = np.ascontiguousarray(t.T if transposed else t, dtype=np.float32)
    return out


# ----------------------------------------------------------------------------- reading HF checkpoints

class SafetensorsReader:
    """Tensors by name across one or more safetensors files, read lazily as fp32 NumPy arrays."""

    def __init__(self, files: list[Path]):
        from safetensors import SafetensorError, safe_open

        self.handles, self.where = [], {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="np")
                keys = list(handle.keys())
            except (SafetensorError, OSError) as e:
                raise LlmcError(f"{path}: not a readable safetensors file ({e})") from None
            self.handles.append(handle)
            for k in keys:
                self.where[k.removeprefix(PREFIX)] = (path, handle, k)

    def names(self) -> set[str]:
        return set(self.where)

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise LlmcError(f"no tensor {name} in {', '.join(sorted({p.name for p, _, _ in self.where.values()}))}")
        path, handle, key = self.where[name]
        try:
            t = handle.get_tensor(key)
        except TypeError:  # bf16 has no NumPy dtype: let torch read it, if present
            t = _read_with_torch(path, key)
        except Exception as e:
            raise LlmcError(f"{path}: cannot read tensor {key} ({e})") from None
        return t.astype(np.float32, copy=False)


def _read_with_torch(path: Path, key: str) -> np.ndarray:
    try:
        from safetensors import safe_open
        import torch  # noqa: F401
    except ImportError:
        raise LlmcError(f"{path}: tensor {key} is bfloat16, which needs torch to read (pip install torch)") from None
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key).float().numpy()


def load_hf(source: str, echo: Callable[[str], None] = print) -> tuple[GPTConfig, np.ndarray]:
    """(config, flat fp32 llm.c parameters) of a HF GPT-2 checkpoint: folder, name or repo id."""
    config_path, files = resolve_source(source, echo)
    cfg = config_from_hf(_read_json(config_path), str(config_path))
    reader = SafetensorsReader(files)
    try:
        flat = hf_to_llmc(cfg, reader)
    except LlmcError as e:
        raise LlmcError(f"{source}: {e}") from None
    expected = {template.format(l=l) for template, _ in HF_NAMES.values() for l in range(cfg.num_layers)}
    extra = {n for n in reader.names() - expected if not n.endswith(IGNORED_SUFFIXES)}
    if "lm_head.weight" in extra:  # tied: must repeat wte
        if not np.array_equal(reader("lm_head.weight"), reader("wte.weight")):
            raise LlmcError(f"{source}: lm_head.weight differs from wte.weight; llm.c ties them")
        extra.discard("lm_head.weight")
    if extra:
        raise LlmcError(f"{source}: unexpected tensors for GPT-2: {', '.join(sorted(extra)[:5])}")
    return cfg, flat


# ----------------------------------------------------------------------------- writing HF checkpoints

def write_hf(out_dir: str | os.PathLike, cfg: GPTConfig, flat: np.ndarray) -> list[Path]:
    """config.json + model.safetensors loadable by transformers.GPT2LMHeadModel.from_pretrained."""
    from safetensors.numpy import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, model_path = out_dir / "config.json", out_dir / "model.safetensors"
    with atomic_write(model_path) as f:
        f.write(save(llmc_to_hf(cfg, flat), metadata={"format": "pt"}))
    with atomic_write(config_path) as f:
        f.write((json.dumps(hf_config(cfg), indent=2) + "\n").encode())
    return [config_path, model_path]


def padded_rows_nonzero(cfg: GPTConfig, flat: np.ndarray) -> bool:
    """Whether wte's padding rows (V..Vp) hold anything; HF has no room for them."""
    return bool(flat[cfg.vocab_size * cfg.channels: cfg.padded_vocab_size * cfg.channels].any())

"""Llama 3 weights between Hugging Face (LlamaForCausalLM's config.json + safetensors) and llm.c's flat
Llama parameters (core/llama_config.param_shapes), as train_llama3.py's adapt_llama_state_dict_keys_hf.

HF's converter permuted Meta's q/k rows so that its rotate_half RoPE pairs channel i with i + HS/2;
llm.c (as Meta) rotates adjacent pairs (2i, 2i+1), so q/k are unpermuted on the way in and permuted
back on the way out. SwiGLU: HF's down_proj(silu(gate_proj(x)) * up_proj(x)) is llm.c's
c_proj(c_fc(x) * silu(c_fc2(x))), so fcw = [up_proj; gate_proj]. llm.c's bias slots stay zero. llm.c's
file has multiple_of and ffn_dim_multiplier where HF has intermediate_size, and a version HF has not:
config.json keeps them under "llmc" so that .bin -> HF -> .bin is byte-identical; without that key
they are derived from intermediate_size.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.flat_model import views
from llmc.core.formats import atomic_write
from llmc.core.hf_weights import SafetensorsReader
from llmc.core.hub import _read_json
from llmc.core.llama_config import LLAMA3_VOCAB, NAMED_SHAPES, LlamaConfig, num_parameters, param_shapes

BIAS_SLOTS = ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb")
# llm.c's apply_scaling (train_llama3.py) hard-codes Llama 3.1's rope_scaling
LLMC_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a RoPE buffer in old checkpoints
LAYER = "model.layers.{l}."
# train_llama3.py's MODEL_DICT by (L, NH, C): (its size name, its config), for file names and the header
NAMED_SIZES = {(c.num_layers, c.num_heads, c.channels): (name.split("-")[-1].upper(), c)
               for name, c in NAMED_SHAPES.items()}
# llm.c's per-layer weights that are one HF tensor each (qkvw and fcw are concatenations), by HF name
LAYER_TENSORS = {"ln1w": "input_layernorm.weight", "attprojw": "self_attn.o_proj.weight",
                 "ln2w": "post_attention_layernorm.weight", "fcprojw": "mlp.down_proj.weight"}


# ----------------------------------------------------------------------------- configs

def _f32(x: float) -> float:
    """The shortest decimal that is x's fp32 value: config.json reads as written, and back to the same fp32."""
    return float(str(np.float32(x)))


def _swiglu_candidates(hf: dict, shape: tuple[int, int, int]) -> list[tuple[int, float]]:
    """(multiple_of, ffn_dim_multiplier) pairs to try for intermediate_size, best first: llm.c's own (the
    "llmc" key, train_llama3.py's MODEL_DICT), then multiple_of = its largest power-of-two divisor up to
    1024 with the shortest decimal multiplier."""
    I, C = int(hf["intermediate_size"]), shape[2]
    pairs = []
    if isinstance(hf.get("llmc"), dict) and {"multiple_of", "ffn_dim_multiplier"} <= hf["llmc"].keys():
        pairs.append((int(hf["llmc"]["multiple_of"]), float(hf["llmc"]["ffn_dim_multiplier"])))
    if shape in NAMED_SIZES:
        named = NAMED_SIZES[shape][1]
        pairs.append((named.multiple_of, named.ffn_dim_multiplier))
    m = min(I & -I, 1024) if I > 0 else 1
    exact = I / max(int(2 * (4 * C) / 3), 1)  # as LlamaConfig.hidden_dim's int(2/3 of 4C)
    pairs += [(m, round(exact, digits)) for digits in range(1, 9)] + [(m, exact)]
    return [(m, f) for m, f in pairs if m > 0 and f > 0]


def config_from_hf(hf: dict, where: str = "config.json",
                   echo: Callable[[str], None] = print) -> tuple[LlamaConfig, bool]:
    """(llm.c's config, tie_word_embeddings) for a HF Llama config; refuses what llm.c's Llama cannot express."""
    if hf.get("model_type") != "llama":
        raise LlmcError(f"{where}: model_type {hf.get('model_type')!r} is not llama")
    try:
        C, L, NH, I, V, maxT = (int(hf[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                     "intermediate_size", "vocab_size", "max_position_embeddings"))
        NKV = int(hf.get("num_key_value_heads") or NH)
        eps = float(hf.get("rms_norm_eps", 1e-6))
        llmc = hf.get("llmc") if isinstance(hf.get("llmc"), dict) else {}
        named = NAMED_SIZES.get((L, NH, C))
        version = [int(v) for v in str(llmc.get("version") or (f"3.{named[1].version_minor}" if named else "3.1"))
                   .split(".")][:2] + [0]
        swiglu = _swiglu_candidates(hf, (L, NH, C))
    except (KeyError, TypeError, ValueError) as e:
        raise LlmcError(f"{where}: missing or bad Llama size field {e}") from None
    # transformers 5 writes rope_parameters (rope_theta inside); earlier versions rope_theta + rope_scaling
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise LlmcError(f"{where}: rope_scaling type {rope_type!r}: llm.c's Llama has only llama3's scaled RoPE")
    unsupported = {
        "hidden_act": hf.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(hf.get("attention_bias", False)),
        "mlp_bias": bool(hf.get("mlp_bias", False)),
        "head_dim": hf.get("head_dim") not in (None, C // NH if NH else None),
    }
    bad = [f"{k}={hf.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise LlmcError(f"{where}: llm.c's Llama cannot express {', '.join(bad)}")
    scaled = rope_type == "llama3"
    if scaled:
        differs = [f"{k} {rope.get(k)}" for k, v in LLMC_ROPE_SCALING.items() if k != "rope_type" and rope.get(k) != v]
        if differs:  # e.g. Llama 3.2's factor 32: llm.c (train_llama3.py too) computes with Llama 3.1's values
            echo(f"note: {where} has rope_scaling {', '.join(differs)}; llm.c's scaled RoPE uses factor 8, "
                 "low/high_freq_factor 1/4, original_max_position_embeddings 8192: long-range logits will differ")
    base = dict(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH, num_kv_heads=NKV, channels=C,
                norm_eps=eps, rope_theta=theta, use_scaled_rope=scaled, version_major=version[0],
                version_minor=version[1])
    for m, f in swiglu:
        cfg = LlamaConfig(multiple_of=m, ffn_dim_multiplier=f, **base)
        if cfg.hidden_dim == I:
            return cfg, bool(hf.get("tie_word_embeddings", False))
    raise LlmcError(f"{where}: no multiple_of, ffn_dim_multiplier give llm.c's SwiGLU intermediate_size {I} at "
                    f"hidden_size {C}")


def hf_config(cfg: LlamaConfig, tied: bool) -> dict:
    """A transformers LlamaConfig (as config.json) for llm.c's model, in the rope_theta + rope_scaling
    form that transformers 4 and 5 both read; "llmc" keeps what HF's config has no field for."""
    bos_eos = {"bos_token_id": 128000, "eos_token_id": 128001} if cfg.vocab_size == LLAMA3_VOCAB else {}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.channels, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_size, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": _f32(cfg.norm_eps),
        "rope_theta": _f32(cfg.rope_theta), "rope_scaling": dict(LLMC_ROPE_SCALING) if cfg.use_scaled_rope else None,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "tie_word_embeddings": tied, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32",
        **bos_eos,
        "llmc": {"multiple_of": cfg.multiple_of, "ffn_dim_multiplier": _f32(cfg.ffn_dim_multiplier),
                 "version": f"{cfg.version_major}.{cfg.version_minor}"},
    }


# ----------------------------------------------------------------------------- tensors

def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Meta's q/k rows (RoPE on adjacent pairs) in HF's order (rotate_half: pairs half a head apart)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """train_llama3.py's unpermute: HF's q/k rows back in Meta's (llm.c's) order."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def hf_names(cfg: LlamaConfig, tied: bool) -> set[str]:
    """The tensors a HF LlamaForCausalLM checkpoint of this config holds."""
    per_layer = [*LAYER_TENSORS.values(), *(f"self_attn.{p}_proj.weight" for p in "qkv"),
                 "mlp.up_proj.weight", "mlp.gate_proj.weight"]
    names = {"model.embed_tokens.weight", "model.norm.weight"} | (set() if tied else {"lm_head.weight"})
    return names | {LAYER.format(l=l) + n for l in range(cfg.num_layers) for n in per_layer}


def hf_to_llmc(cfg: LlamaConfig, tied: bool, get: Callable[[str], np.ndarray], dtype=np.float32) -> np.ndarray:
    """Flat llm.c parameters from HF tensors, get(name) giving HF's tensor (gradients work too); the bias
    slots zero; tied, wte in both wte and wlmhead."""
    flat = np.zeros(num_parameters(cfg), dtype=dtype)
    p = views(flat, param_shapes(cfg))
    NH, NKV, HS, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_size, cfg.hidden_dim

    def put(dst: np.ndarray, name: str, f: Callable[[np.ndarray], np.ndarray] = lambda t: t) -> None:
        t = np.asarray(get(name))
        if t.shape != dst.shape:
            raise LlmcError(f"tensor {name} has shape {t.shape}, the config needs {dst.shape}")
        dst[...] = f(t)

    put(p["wte"], "model.embed_tokens.weight")
    put(p["wlmhead"], "model.embed_tokens.weight" if tied else "lm_head.weight")
    put(p["lnfw"], "model.norm.weight")
    for l in range(cfg.num_layers):
        pre = LAYER.format(l=l)
        for slot, name in LAYER_TENSORS.items():
            put(p[slot][l], pre + name)
        q, k, v = np.split(p["qkvw"][l], [NH * HS, (NH + NKV) * HS])  # views into qkvw
        put(q, pre + "self_attn.q_proj.weight", lambda t: unpermute(t, NH))
        put(k, pre + "self_attn.k_proj.weight", lambda t: unpermute(t, NKV))
        put(v, pre + "self_attn.v_proj.weight")
        put(p["fcw"][l, :H], pre + "mlp.up_proj.weight")  # c_fc
        put(p["fcw"][l, H:], pre + "mlp.gate_proj.weight")  # c_fc2, under silu
    return flat


def llmc_to_hf(cfg: LlamaConfig, flat: np.ndarray, tied: bool) -> dict[str, np.ndarray]:
    """HF tensors (names as LlamaForCausalLM.save_pretrained writes them, in flat's dtype) from llm.c's
    parameters; tied: no lm_head.weight. The bias slots are dropped: check them first (nonzero_biases)."""
    p = views(flat, param_shapes(cfg))
    NH, NKV, HS, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_size, cfg.hidden_dim
    out = {"model.embed_tokens.weight": p["wte"], "model.norm.weight": p["lnfw"]}
    if not tied:
        out["lm_head.weight"] = p["wlmhead"]
    for l in range(cfg.num_layers):
        pre = LAYER.format(l=l)
        out.update({pre + name: p[slot][l] for slot, name in LAYER_TENSORS.items()})
        q, k, v = np.split(p["qkvw"][l], [NH * HS, (NH + NKV) * HS])
        out[pre + "self_attn.q_proj.weight"] = permute(q, NH)
        out[pre + "self_attn.k_proj.weight"] = permute(k, NKV)
        out[pre + "self_attn.v_proj.weight"] = v
        out[pre + "mlp.up_proj.weight"] = p["fcw"][l, :H]
        out[pre + "mlp.gate_proj.weight"] = p["fcw"][l, H:]
    return {name: np.ascontiguousarray(t) for name, t in out.items()}


def nonzero_biases(cfg: LlamaConfig, flat: np.ndarray) -> list[str]:
    """llm.c's bias slots that hold anything: HF's Llama has no biases to put them in."""
    p = views(flat, param_shapes(cfg))
    return [name for name in BIAS_SLOTS if p[name].any()]


def is_tied(cfg: LlamaConfig, flat: np.ndarray) -> bool:
    """Whether lm_head repeats wte exactly: then HF ties them."""
    p = views(flat, param_shapes(cfg))
    return bool(np.array_equal(p["wte"], p["wlmhead"]))


# ----------------------------------------------------------------------------- reading and writing HF folders

def load_hf(config_path: Path, files: list[Path], where: str,
            echo: Callable[[str], None] = print) -> tuple[LlamaConfig, np.ndarray]:
    """(config, flat fp32 llm.c parameters) of a HF Llama checkpoint (core/hub.resolve_source's files)."""
    cfg, tied = config_from_hf(_read_json(config_path), str(config_path), echo)
    reader = SafetensorsReader(files)
    if tied and "lm_head.weight" in reader.names():  # some savers repeat the tied weight
        if not np.array_equal(reader("lm_head.weight"), reader("model.embed_tokens.weight")):
            raise LlmcError(f"{where}: tie_word_embeddings is set but lm_head.weight differs from embed_tokens")
    try:
        flat = hf_to_llmc(cfg, tied, reader)
    except LlmcError as e:
        raise LlmcError(f"{where}: {e}") from None
    extra = {n for n in reader.names() - hf_names(cfg, tied) - {"lm_head.weight"} if not n.endswith(IGNORED_SUFFIXES)}
    if extra:
        raise LlmcError(f"{where}: unexpected tensors for Llama: {', '.join(sorted(extra)[:5])}")
    return cfg, flat


def write_hf(out_dir: str | os.PathLike, cfg: LlamaConfig, flat: np.ndarray) -> list[Path]:
    """config.json + model.safetensors loadable by transformers.LlamaForCausalLM.from_pretrained; refuses
    non-zero bias slots (HF's Llama has none)."""
    from safetensors.numpy import save

    bad = nonzero_biases(cfg, flat)
    if bad:
        raise LlmcError(f"non-zero bias slots {', '.join(bad)}: HF's Llama has no biases to hold them")
    tied = is_tied(cfg, flat)
    tensors = {k: t.astype(np.float32, copy=False) for k, t in llmc_to_hf(cfg, flat, tied).items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, model_path = out_dir / "config.json", out_dir / "model.safetensors"
    with atomic_write(model_path) as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    with atomic_write(config_path) as f:
        f.write((json.dumps(hf_config(cfg, tied), indent=2) + "\n").encode())
    return [config_path, model_path]


def file_stem(cfg: LlamaConfig) -> str:
    """train_llama3.py's llama{version}_{size} (`llama3.2_1B`), or the shape for others (`llama3.1_L2H4KV2C64`)."""
    named = NAMED_SIZES.get((cfg.num_layers, cfg.num_heads, cfg.channels))
    size = named[0] if named and named[1].num_kv_heads == cfg.num_kv_heads else \
        f"L{cfg.num_layers}H{cfg.num_heads}KV{cfg.num_kv_heads}C{cfg.channels}"
    return f"llama{cfg.version_major}.{cfg.version_minor}_{size}"

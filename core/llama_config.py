"""Llama 3 model shapes, llm.c's Llama parameter table (llama3 branch) and a random init.

llm.c keeps GPT-2's 16 tensor slots for Llama 3 (train_llama3.py write_tensors): every bias slot is
there but zero, lm_head sits in wpe's slot, and SwiGLU's two input projections c_fc, c_fc2 are one
fused fcw. Size letters as in core/config.py, plus NKV key/value heads and H the SwiGLU hidden size.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.flat_model import views
from llmc.core.rand import MT19937

LLAMA3_VOCAB = 128256


@dataclass(frozen=True)
class LlamaConfig:
    max_seq_len: int  # maxT, the longest sequence (RoPE positions)
    vocab_size: int  # V; llm.c does not pad it for Llama 3 (Vp = V)
    num_layers: int  # L
    num_heads: int  # NH, query heads
    num_kv_heads: int  # NKV, key/value heads (grouped-query attention)
    channels: int  # C
    multiple_of: int  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float  # scales SwiGLU's 2/3 * 4C hidden size
    norm_eps: float = 1e-5  # RMSNorm's epsilon
    rope_theta: float = 500000.0
    use_scaled_rope: bool = True  # Llama 3.1's low-frequency RoPE scaling (apply_scaling)
    version_major: int = 3  # recorded in the file, unused by llm.c; train_llama3.cu writes 3.1
    version_minor: int = 1

    def __post_init__(self):
        # the model file holds these in fp32: keep their fp32 values, so a config equals itself read back
        # and a resumed run computes with the same eps and theta as the run it continues
        for name in ("ffn_dim_multiplier", "norm_eps", "rope_theta"):
            value = float(np.float32(getattr(self, name)))
            if not (math.isfinite(value) and value > 0):
                raise LlmcError(f"model config has a non-positive or non-finite {name}: {self}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "use_scaled_rope", bool(self.use_scaled_rope))
        sizes = (self.max_seq_len, self.vocab_size, self.num_layers, self.num_heads, self.num_kv_heads,
                 self.channels, self.multiple_of)
        if min(sizes) <= 0:
            raise LlmcError(f"model config has a non-positive size: {self}")
        if self.channels % self.num_heads:
            raise LlmcError(f"channels {self.channels} not divisible by heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise LlmcError(f"heads {self.num_heads} not divisible by kv heads {self.num_kv_heads}")
        if self.head_size % 2:
            raise LlmcError(f"head size {self.head_size} is odd; RoPE rotates pairs of channels")
        if self.hidden_dim <= 0:
            raise LlmcError(f"ffn_dim_multiplier {self.ffn_dim_multiplier} leaves no SwiGLU hidden units")

    @property
    def padded_vocab_size(self) -> int:
        return self.vocab_size  # train_llama3.cu: "in Llama 3 there is no need for padding"

    @property
    def head_size(self) -> int:
        return self.channels // self.num_heads

    @property
    def qkv_channels(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_size

    @property
    def hidden_dim(self) -> int:
        """SwiGLU's hidden size H, as train_llama3.py's MLP: int(2/3 of 4C), times ffn_dim_multiplier
        (truncated), rounded up to a multiple of multiple_of."""
        hidden = int(self.ffn_dim_multiplier * int(2 * (4 * self.channels) / 3))
        return self.multiple_of * -(-hidden // self.multiple_of)


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """llm.c's Llama 3 tensors in file order, named as train_llama3.cu's ParameterTensors."""
    V, C, L, H = cfg.vocab_size, cfg.channels, cfg.num_layers, cfg.hidden_dim
    QKV = cfg.qkv_channels
    return {
        "wte": (V, C),
        "wlmhead": (V, C),  # in GPT-2's wpe slot
        "ln1w": (L, C),
        "ln1b": (L, C),  # zero: RMSNorm has no bias
        "qkvw": (L, QKV, C),
        "qkvb": (L, QKV),
        "attprojw": (L, C, C),
        "attprojb": (L, C),
        "ln2w": (L, C),
        "ln2b": (L, C),
        "fcw": (L, 2 * H, C),  # c_fc's H rows, then c_fc2's (the gate)
        "fcb": (L, 2 * H),
        "fcprojw": (L, C, H),
        "fcprojb": (L, C),
        "lnfw": (C,),
        "lnfb": (C,),
    }


# the 2-D weights (matmul weights and embeddings): the only tensors that get weight decay
DECAYED_PARAMS = ("wte", "wlmhead", "qkvw", "attprojw", "fcw", "fcprojw")


def num_parameters(cfg: LlamaConfig) -> int:
    """All of the file's parameters, the zero bias slots included (llm.c's num_parameters)."""
    return sum(math.prod(shape) for shape in param_shapes(cfg).values())


def flops_per_token(cfg: LlamaConfig, T: int) -> int:
    """Training FLOPs per token (MFU): 6 per weight of the matmuls (wte is a lookup, the biases are
    zero) plus attention's 6LCT as llm.c counts it for GPT-2. GQA shrinks only the K/V projections,
    which qkvw's size already counts: every query head still scores and mixes all T positions at HS
    channels, NH * HS = C per token and layer."""
    shapes = param_shapes(cfg)
    matmul_weights = sum(math.prod(shapes[name]) for name in DECAYED_PARAMS if name != "wte")
    return 6 * matmul_weights + 6 * cfg.num_layers * cfg.channels * T


def describe(cfg: LlamaConfig) -> list[tuple[str, object]]:
    """The model's rows of llm.c's start-up table."""
    rope = f"{cfg.rope_theta:g}" + (" (scaled)" if cfg.use_scaled_rope else "")
    return [("max_sequence_length T", cfg.max_seq_len), ("vocab_size V", cfg.vocab_size),
            ("padded_vocab_size Vp", cfg.padded_vocab_size), ("num_layers L", cfg.num_layers),
            ("num_heads NH", cfg.num_heads), ("num_kv_heads NKV", cfg.num_kv_heads), ("channels C", cfg.channels),
            ("ffn hidden_dim", cfg.hidden_dim), ("rope_theta", rope), ("num_parameters", num_parameters(cfg))]


def _model_dict(n_layer: int, n_head: int, n_embd: int, ffn_dim_multiplier: float, minor: int) -> LlamaConfig:
    # train_llama3.py's LlamaConfig defaults: block_size 8192, 8 kv heads, multiple_of 1024
    return LlamaConfig(8192, LLAMA3_VOCAB, n_layer, n_head, 8, n_embd, 1024, ffn_dim_multiplier, version_minor=minor)


# train_llama3.py's MODEL_DICT
NAMED_SHAPES = {
    "llama3.1-8b": _model_dict(32, 32, 4096, 1.3, 1),
    "llama3.2-3b": _model_dict(28, 24, 3072, 1.0, 2),
    "llama3.2-1b": _model_dict(16, 32, 2048, 1.4, 2),
}

_DESCRIPTOR_PART = re.compile(r"(kv|[dchtvfm])(.+)")


def config_from_descriptor(descriptor: str) -> LlamaConfig:
    """A Llama 3 shape for a random init: a name of train_llama3.py's MODEL_DICT (`llama3.2-1b`,
    `llama3.2-3b`, `llama3.1-8b`) or `llama3:dL:cC:hH:kvK[:tT][:vV][:fF][:mM]`: depth L, channels C,
    heads H, key/value heads K, max sequence length T (8192, train_llama3.py's block_size), vocab V
    (128256, Llama 3's tokenizer), ffn_dim_multiplier F (1.0) and multiple_of M (256, Meta's value for
    Llama 3.2 1B and 3B). norm_eps 1e-5, rope_theta 500000 and scaled RoPE as llm.c's defaults. So
    `llama3:d16:c2048:h32:kv8:v128256:f1.5` has Llama-3.2-1B's shape (SwiGLU hidden size 8192); a
    small M suits small models (`llama3:d4:c128:h4:kv2:t256:m32`)."""
    if descriptor in NAMED_SHAPES:
        return NAMED_SHAPES[descriptor]
    try:
        family, *parts = descriptor.split(":")
        if family != "llama3":
            raise ValueError
        sizes = {}
        for part in parts:
            key, value = _DESCRIPTOR_PART.fullmatch(part).groups()
            if key in sizes:
                raise ValueError
            sizes[key] = float(value) if key == "f" else int(value)
        return LlamaConfig(max_seq_len=sizes.get("t", 8192), vocab_size=sizes.get("v", LLAMA3_VOCAB),
                           num_layers=sizes["d"], num_heads=sizes["h"], num_kv_heads=sizes["kv"],
                           channels=sizes["c"], multiple_of=sizes.get("m", 256),
                           ffn_dim_multiplier=sizes.get("f", 1.0))
    except (KeyError, ValueError, AttributeError):
        raise LlmcError(
            f"unsupported Llama 3 descriptor {descriptor!r}: use {'|'.join(NAMED_SHAPES)} or "
            f"llama3:dL:cC:hH:kvK[:tT][:vV][:fF][:mM] (e.g. llama3:d4:c128:h4:kv2:t256:m32)") from None


def random_init(cfg: LlamaConfig, seed: int = 42) -> np.ndarray:
    """Llama 3 parameters in the style of llm.c's GPT-2 init (llm.c has none for Llama): one mt19937
    stream of torch-compatible normals drawn in PyTorch's module order of train_llama3.py's LLaMA --
    wte, then per layer c_attn (qkvw), attn.c_proj (attprojw), mlp.c_fc and mlp.c_fc2 (fcw's two
    halves, separate draws), mlp.c_proj (fcprojw), and lm_head (wlmhead) last. std 0.02, the
    residual projections attprojw and fcprojw 0.02/sqrt(2L); RMSNorm weights 1, the bias slots 0."""
    params = np.zeros(num_parameters(cfg), dtype=np.float32)
    p = views(params, param_shapes(cfg))
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name][...] = 1.0
    rng = MT19937(seed)
    H = cfg.hidden_dim
    residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)

    def draw(t: np.ndarray, std: float) -> None:
        rng.normal_fill(t, 0.0, std)

    draw(p["wte"], 0.02)
    for l in range(cfg.num_layers):
        draw(p["qkvw"][l], 0.02)
        draw(p["attprojw"][l], residual_std)
        draw(p["fcw"][l, :H], 0.02)  # c_fc
        draw(p["fcw"][l, H:], 0.02)  # c_fc2
        draw(p["fcprojw"][l], residual_std)
    draw(p["wlmhead"], 0.02)
    return params

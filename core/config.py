"""GPT-2/GPT-3 model shapes and the llm.c parameter table.

Size letters used throughout: B batch, T time (sequence), C channels, V vocab, Vp padded vocab,
L layers, NH heads, HS head size (C // NH).
"""

import math
from dataclasses import dataclass

from llmc.core.errors import LlmcError

GPT2_EOT = 50256
GPT2_VOCAB = 50257
LN_EPS = 1e-5  # layernorm's epsilon
GELU_SCALE = math.sqrt(2.0 / math.pi)  # GELU's tanh approximation: 0.5 x (1 + tanh(GELU_SCALE (x + GELU_CUBIC x^3)))
GELU_CUBIC = 0.044715


@dataclass(frozen=True)
class GPTConfig:
    max_seq_len: int  # maxT, positions in wpe
    vocab_size: int  # V, real tokens
    padded_vocab_size: int  # Vp, V rounded up to a multiple of 128 (zero rows in wte)
    num_layers: int  # L
    num_heads: int  # NH
    channels: int  # C

    def __post_init__(self):
        fields = (self.max_seq_len, self.vocab_size, self.padded_vocab_size, self.num_layers, self.num_heads, self.channels)
        if min(fields) <= 0:
            raise LlmcError(f"model config has a non-positive size: {self}")
        if self.channels % self.num_heads:
            raise LlmcError(f"channels {self.channels} not divisible by heads {self.num_heads}")
        if self.padded_vocab_size < self.vocab_size:
            raise LlmcError(f"padded vocab {self.padded_vocab_size} < vocab {self.vocab_size}")


def pad_vocab(vocab_size: int, multiple: int = 128) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def param_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """llm.c's parameter tensors in file order; each is one block over all layers."""
    Vp, C, L, maxT = cfg.padded_vocab_size, cfg.channels, cfg.num_layers, cfg.max_seq_len
    return {
        "wte": (Vp, C),
        "wpe": (maxT, C),
        "ln1w": (L, C),
        "ln1b": (L, C),
        "qkvw": (L, 3 * C, C),
        "qkvb": (L, 3 * C),
        "attprojw": (L, C, C),
        "attprojb": (L, C),
        "ln2w": (L, C),
        "ln2b": (L, C),
        "fcw": (L, 4 * C, C),
        "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C),
        "fcprojb": (L, C),
        "lnfw": (C,),
        "lnfb": (C,),
    }


# the 2-D weights (matmul weights and embeddings): the only tensors that get weight decay
DECAYED_PARAMS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def num_parameters(cfg: GPTConfig) -> int:
    return sum(math.prod(shape) for shape in param_shapes(cfg).values())


def describe(cfg: GPTConfig) -> list[tuple[str, object]]:
    """The model's rows of llm.c's start-up table."""
    return [("max_sequence_length T", cfg.max_seq_len), ("vocab_size V", cfg.vocab_size),
            ("padded_vocab_size Vp", cfg.padded_vocab_size), ("num_layers L", cfg.num_layers),
            ("num_heads NH", cfg.num_heads), ("channels C", cfg.channels), ("num_parameters", num_parameters(cfg))]


def flops_per_token(cfg: GPTConfig, T: int) -> int:
    """Training FLOPs per token, llm.c's MFU estimate: 6N for the weight matmuls plus attention's 6LCT."""
    return 6 * num_parameters(cfg) + 6 * cfg.num_layers * cfg.channels * T


# llm.c's gpt2_set_hyperparameters: depth -> (channels, heads)
GPT2_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}
# llm.c's gpt3_set_hyperparameters: channels -> (depth, head size)
GPT3_CHANNELS = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128),
                 2560: (32, 80), 4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}


def config_from_descriptor(descriptor: str) -> GPTConfig:
    """llm.c's gpt_build_from_descriptor (`d12`, `gpt2:d12`, `gpt3:c768`), and any GPT-2 shape as
    `dL:cC:hH[:tT][:vV]`: depth L, channels C, heads H, max sequence length T (1024), vocab V (50257).
    A depth of llm.c's table may leave out c and h (`d12:t256`)."""
    try:
        if descriptor.startswith("gpt3:c"):
            C = int(descriptor[6:])
            L, HS = GPT3_CHANNELS[C]
            return GPTConfig(2048, GPT2_VOCAB, pad_vocab(GPT2_VOCAB), L, C // HS, C)
        first, *rest = descriptor.removeprefix("gpt2:").split(":")
        if not first.startswith("d"):
            raise ValueError
        L = int(first[1:])
        sizes = {part[0]: int(part[1:]) for part in rest}
        if len(sizes) != len(rest) or not set(sizes) <= set("chtv"):
            raise ValueError
        if "c" not in sizes and "h" not in sizes:
            sizes["c"], sizes["h"] = GPT2_DEPTHS[L]
        V = sizes.get("v", GPT2_VOCAB)
        return GPTConfig(sizes.get("t", 1024), V, pad_vocab(V), L, sizes["h"], sizes["c"])
    except (KeyError, ValueError, TypeError, IndexError):
        raise LlmcError(
            f"unsupported model descriptor {descriptor!r}: use d6|d12|d24|d36|d48|d60|d72|d84, "
            f"gpt3:c384|c768|c1024|c1536|c2048|c2560|c4096|c5140|c12288, dL:cC:hH[:tT][:vV] "
            f"(e.g. d4:c128:h4:t128), or a .bin checkpoint") from None

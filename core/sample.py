"""Text generation with a KV cache, and llm.c's sampler.

Each new token runs one position through the model: its query attends to the keys and values cached
for every earlier position, so a token costs one position, not a re-forward of the whole prefix.
The math is GPT-2's forward (core/model.py) written for a few positions at a time, in fp32, with an
array module `xp` (NumPy, or CuPy for --device gpu: the same code). Sampling is llm.c's: an xorshift
coin per token (seeded 1337 for mid-training samples) and sample_softmax over the first V logits.
"""

import codecs
import math
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import numpy as np

from llmc.core.config import GPT2_EOT, GPTConfig, param_shapes
from llmc.core.errors import LlmcError
from llmc.core.model import views
from llmc.core.rand import XorShift

LN_EPS = 1e-5
GELU_SCALE = math.sqrt(2.0 / math.pi)
LLMC_TOKENIZER = "gpt2_tokenizer.bin"  # llm.c's default tokenizer file, looked for in the cwd


def _layernorm(xp, x, weight, bias):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + LN_EPS)
    return xc * rstd * weight + bias


def _gelu(xp, x):
    return 0.5 * x * (1.0 + xp.tanh(GELU_SCALE * (x + 0.044715 * x * x * x)))


class KVCacheModel:
    """GPT-2 inference over positions 0..length-1, caching each layer's keys and values."""

    def __init__(self, cfg: GPTConfig, params, xp: ModuleType, length: int):
        if not 0 < length <= cfg.max_seq_len:
            raise LlmcError(f"generation needs {length} positions; the model has max_seq_len {cfg.max_seq_len}")
        self.cfg, self.xp, self.length = cfg, xp, length
        self.p = views(params, param_shapes(cfg))  # fp32, llm.c order
        L, NH, C = cfg.num_layers, cfg.num_heads, cfg.channels
        self.k = xp.zeros((L, NH, length, C // NH), dtype=np.float32)  # (L, NH, length, HS)
        self.v = xp.zeros((L, NH, length, C // NH), dtype=np.float32)
        self.pos = 0  # positions cached so far

    def reset(self) -> None:
        self.pos = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Append len(tokens) positions; the host fp32 logits (V,) of the last one."""
        xp, p, cfg = self.xp, self.p, self.cfg
        L, NH, C = cfg.num_layers, cfg.num_heads, cfg.channels
        n, start = len(tokens), self.pos
        end = start + n
        if end > self.length:
            raise LlmcError(f"position {end - 1} is past the KV cache's {self.length} positions")
        idx = xp.asarray(np.asarray(tokens, dtype=np.int64))
        x = p["wte"][idx] + p["wpe"][start:end]  # (n, C)
        # query i (position start+i) may not see keys after it; nothing to mask for one new token
        future = xp.asarray(np.arange(end)[None, :] > start + np.arange(n)[:, None]) if n > 1 else None
        for l in range(L):
            qkv = _layernorm(xp, x, p["ln1w"][l], p["ln1b"][l]) @ p["qkvw"][l].T + p["qkvb"][l]  # (n, 3C)
            q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(n, NH, -1).transpose(1, 0, 2) for i in range(3))
            self.k[l, :, start:end] = k  # (NH, n, HS)
            self.v[l, :, start:end] = v
            att = q @ self.k[l, :, :end].transpose(0, 2, 1) * (1.0 / math.sqrt(C // NH))  # (NH, n, end)
            if future is not None:
                att[:, future] = -np.inf
            att = xp.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            y = (att @ self.v[l, :, :end]).transpose(1, 0, 2).reshape(n, C)
            x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
            h = _gelu(xp, _layernorm(xp, x, p["ln2w"][l], p["ln2b"][l]) @ p["fcw"][l].T + p["fcb"][l])  # (n, 4C)
            x = x + h @ p["fcprojw"][l].T + p["fcprojb"][l]
        last = _layernorm(xp, x[-1], p["lnfw"], p["lnfb"])  # only the last position's logits are needed
        logits = p["wte"][: cfg.vocab_size] @ last  # (V,), tied weights
        self.pos = end
        return np.asarray(xp.asnumpy(logits) if hasattr(xp, "asnumpy") else logits, dtype=np.float32)


# ----------------------------------------------------------------------------- sampling

def sample_softmax(logits: np.ndarray, coin: float) -> int:
    """llm.c's sample_softmax: the first i whose running sum of exp(logits) passes coin * total
    (fp32 running sum, fp64 total). The max is subtracted first so that large logits (a low
    temperature) cannot overflow; it cancels in the ratio."""
    e = np.exp(logits - logits.max(), dtype=np.float32)
    threshold = np.float32(coin * float(e.sum(dtype=np.float64)))
    cdf = np.cumsum(e, dtype=np.float32)
    return min(int(np.searchsorted(cdf, threshold, side="right")), len(logits) - 1)


def next_token(logits: np.ndarray, rng: XorShift, temperature: float = 1.0, top_k: int = 0) -> int:
    """temperature 1 and top_k 0 is exactly llm.c's draw; temperature 0 is greedy."""
    if temperature == 0:
        return int(np.argmax(logits))
    if temperature != 1.0:
        # in fp64, less the max: a tiny temperature would overflow fp32 (or round to 0 in it) and draw garbage;
        # what is still below fp32's range becomes -inf, a zero probability, as it should
        scaled = logits.astype(np.float64) / temperature
        with np.errstate(over="ignore"):
            logits = (scaled - scaled.max()).astype(np.float32)
    if 0 < top_k < len(logits):
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= kth, logits, -np.inf).astype(np.float32)
    return sample_softmax(logits, rng.f32())


def max_new_tokens(cfg: GPTConfig, prompt_len: int) -> int:
    """The last token is sampled, never forwarded: prompt_len + new - 1 positions must fit."""
    return cfg.max_seq_len - prompt_len + 1


def generate(cfg: GPTConfig, params, xp: ModuleType, prompt: list[int], max_new: int, rng: XorShift,
             temperature: float = 1.0, top_k: int = 0, kv_cache: bool = True) -> Iterator[int]:
    """Yield max_new sampled tokens after prompt (the caller stops early at EOT if it wants).
    Without kv_cache every token re-runs the whole prefix (llm.c's way; for comparison)."""
    if not prompt:
        raise LlmcError("generation needs at least one prompt token (llm.c starts from <|endoftext|>)")
    if not 0 < max_new <= max_new_tokens(cfg, len(prompt)):
        raise LlmcError(f"{len(prompt)} prompt tokens + {max_new} new ones do not fit max_seq_len {cfg.max_seq_len}")
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise LlmcError(f"prompt token id {bad[0]} is outside the model's vocab of {cfg.vocab_size}")
    model = KVCacheModel(cfg, params, xp, len(prompt) + max_new - 1)
    tokens = list(prompt)
    logits = model.forward(tokens)
    for i in range(max_new):
        token = next_token(logits, rng, temperature, top_k)
        yield token
        tokens.append(token)
        if i + 1 < max_new:
            if not kv_cache:
                model.reset()
            logits = model.forward([token] if kv_cache else tokens)


# ----------------------------------------------------------------------------- tokens -> text

class Decoder:
    """Token ids to text as they stream; a character whose UTF-8 bytes span tokens comes out whole."""

    def __init__(self, token_bytes: Callable[[int], bytes], eot: int, path: str | None = None):
        self.token_bytes, self.eot = token_bytes, eot
        self.path = path  # the tokenizer file, for messages; None for the built-in GPT-2 BPE
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token: int) -> str:
        return self.utf8.decode(self.token_bytes(token))

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


def load_decoder(path: str | Path | None = None) -> Decoder:
    """llm.c's tokenizer file (given, or gpt2_tokenizer.bin in the cwd), else GPT-2's BPE from tiktoken."""
    if path is None and Path(LLMC_TOKENIZER).is_file():
        path = LLMC_TOKENIZER
    if path is not None:
        from llmc.core.formats import read_tokenizer
        table, eot = read_tokenizer(path)
        if not 0 <= eot < len(table):  # the file is inconsistent in itself: blame it, not the model
            raise LlmcError(f"{path}: end-of-text id {eot} is outside its {len(table)} tokens")
        return Decoder(lambda t: table[t] if 0 <= t < len(table) else f"<|{t}|>".encode(), eot, str(path))
    from llmc.data.tokenizer import gpt2_encoding
    enc = gpt2_encoding()

    def token_bytes(t: int) -> bytes:
        try:
            return enc.decode_single_token_bytes(t)
        except KeyError:  # a padded-vocab id no tokenizer knows
            return f"<|{t}|>".encode()
    return Decoder(token_bytes, GPT2_EOT)


def encode_prompt(text: str) -> list[int]:
    """GPT-2 BPE tokens of text (tiktoken; llm.c's tokenizer file only decodes)."""
    from llmc.data.tokenizer import encode
    return [int(t) for t in encode(text)]

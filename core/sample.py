"""Text generation through a model family's KV-cache model (GPT-2's: core/model.py's KVCacheModel) or,
for a GPU trainer's mid-run samples, a re-forward of the training model (ReforwardModel); llm.c's sampler,
and streaming decode.

With the KV cache each new token runs one position through the model: its query attends to the keys and
values cached for every earlier position, so a token costs one position, not a re-forward of the whole
prefix. Sampling is llm.c's: an xorshift coin per token (seeded 1337 for mid-training samples) and
sample_softmax over the first V logits.
"""

import codecs
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.rand import XorShift

LLMC_TOKENIZER = "gpt2_tokenizer.bin"  # llm.c's default tokenizer file, looked for in the cwd


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


def max_new_tokens(cfg: Any, prompt_len: int) -> int:
    """The last token is sampled, never forwarded: prompt_len + new - 1 positions must fit."""
    return cfg.max_seq_len - prompt_len + 1


def generate(inference: Callable, cfg: Any, params, xp: ModuleType, prompt: list[int], max_new: int, rng: XorShift,
             temperature: float = 1.0, top_k: int = 0, kv_cache: bool = True) -> Iterator[int]:
    """Yield max_new sampled tokens after prompt (the caller stops early at EOT if it wants), from the model
    inference(cfg, params, xp, positions) makes: the family's KV-cache model class, or a ReforwardModel maker.
    Without kv_cache every token re-runs the whole prefix (llm.c's way; for comparison)."""
    if not prompt:
        raise LlmcError("generation needs at least one prompt token (llm.c starts from <|endoftext|>)")
    if not 0 < max_new <= max_new_tokens(cfg, len(prompt)):
        raise LlmcError(f"{len(prompt)} prompt tokens + {max_new} new ones do not fit max_seq_len {cfg.max_seq_len}")
    bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
    if bad:
        raise LlmcError(f"prompt token id {bad[0]} is outside the model's vocab of {cfg.vocab_size}")
    model = inference(cfg, params, xp, len(prompt) + max_new - 1)
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


def sample_from_eot(inference: Callable, cfg: Any, params, xp: ModuleType, decoder: "Decoder", gen_tokens: int,
                    out: Callable[[str], None], stream: Callable[[str], None]) -> bool:
    """llm.c's mid-run sample: genT - 1 tokens after <|endoftext|>, xorshift seeded 1337, streamed, from the
    model `inference` makes (as generate's). False (and why) where the model's vocab has no room for the
    tokenizer's EOT."""
    eot = decoder.eot
    if eot >= cfg.vocab_size:
        out(f"no samples: {decoder.path or 'the GPT-2 tokenizer'}'s <|endoftext|> ({eot}) is outside the "
            f"model's vocab of {cfg.vocab_size}")
        return False
    n = min(gen_tokens - 1, max_new_tokens(cfg, 1))
    if n <= 0:
        return True
    out("generating:\n---")
    for token in generate(inference, cfg, params, xp, [eot], n, XorShift(1337)):
        stream(decoder(token))
    stream(decoder.flush())
    out("\n---")
    return True


class ReforwardModel:
    """llm.c's sampler (train_gpt2.cu): each forward re-runs the training model's own forward over every
    position so far, at batch 1 in the backend's precision (bf16 on a GPU, as llm.c), as one graph, and
    gives the last position's logits. On a GPU a token then costs a graph launch and a read-back, where the
    KV cache's fp32 forward launches some 50 small kernels a layer; on the CPU, whose cost is arithmetic, the
    KV cache's one position a token wins. A KV-cache model's interface (forward appends positions, reset);
    params: the training model's, on the backend, shared."""

    def __init__(self, Model: type, backend: ModuleType, cfg: Any, params, length: int):
        if not 0 < length <= cfg.max_seq_len:
            raise LlmcError(f"generation needs {length} positions; the model has max_seq_len {cfg.max_seq_len}")
        # whole tiles of 64 positions where max_seq_len allows (aligned kernels); causal attention keeps the
        # positions past the newest token from reaching its logits
        T = min(-(-length // 64) * 64, cfg.max_seq_len)
        self.cfg, self.backend, self.length, self.pos = cfg, backend, length, 0
        self.model = Model(cfg, backend, params, 1, T, master_weights=False, inference=True)
        self.tokens = np.zeros((1, T), dtype=np.int32)
        self.run = backend.graph(lambda: self.model.forward(with_targets=False))

    def reset(self) -> None:
        self.pos = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Append len(tokens) positions; the host fp32 logits (V,) of the last one."""
        end = self.pos + len(tokens)
        if end > self.length:
            raise LlmcError(f"position {end - 1} is past the sampler's {self.length} positions")
        self.tokens[0, self.pos:end] = tokens
        self.pos = end
        self.model.set_batch(self.tokens)
        self.run()
        return self.backend.to_host(self.model.logits[0, end - 1, : self.cfg.vocab_size])


# ----------------------------------------------------------------------------- tokens -> text

class Decoder:
    """Token ids to text as they stream; a character whose UTF-8 bytes span tokens comes out whole, an id
    the tokenizer does not know (token_bytes gives None: a padded vocab's) as <|id|>."""

    def __init__(self, token_bytes: Callable[[int], bytes | None], eot: int, path: str | None = None,
                 encode: Callable[[str], list[int]] | None = None):
        self.token_bytes, self.eot = token_bytes, eot
        self.path = path  # the tokenizer file, for messages; None for the built-in GPT-2 BPE
        self.encode = encode or encode_prompt  # a prompt's ids (GPT-2 BPE unless the tokenizer is Llama 3's)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token: int) -> str:
        raw = self.token_bytes(token)
        return self.utf8.decode(f"<|{token}|>".encode() if raw is None else raw)

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


def load_decoder(path: str | Path | None = None) -> Decoder:
    """llm.c's tokenizer file (given, or gpt2_tokenizer.bin in the cwd), a Llama 3 tokenizer (given: a Hugging
    Face folder or Meta's tokenizer.model, as `prepro -m llama-3` takes; its BOS, which llm.c puts before every
    document, is the end-of-text id), else GPT-2's BPE from tiktoken."""
    if path is None and Path(LLMC_TOKENIZER).is_file():
        path = LLMC_TOKENIZER
    if path is not None and not Path(path).exists():
        raise LlmcError(f"{path}: no such tokenizer file or folder")
    if path is not None and not _is_llmc_tokenizer(Path(path)):
        from llmc.data import llama3_tokenizer
        tok = llama3_tokenizer.load(Path(path))
        return Decoder(tok.token_bytes, tok.bos, str(path), lambda text: [int(t) for t in tok.encode(text)])
    if path is not None:
        from llmc.core.formats import read_tokenizer
        table, eot = read_tokenizer(path)
        if not 0 <= eot < len(table):  # the file is inconsistent in itself: blame it, not the model
            raise LlmcError(f"{path}: end-of-text id {eot} is outside its {len(table)} tokens")
        return Decoder(lambda t: table[t] if 0 <= t < len(table) else None, eot, str(path))
    from llmc.data.tokenizer import EOT, gpt2_encoding, tiktoken_token_bytes
    return Decoder(tiktoken_token_bytes(gpt2_encoding()), EOT)


def _is_llmc_tokenizer(path: Path) -> bool:
    """An llm.c tokenizer file starts with its magic (a Llama 3 tokenizer is a folder or a text file)."""
    from llmc.core.formats import TOKENIZER_MAGIC, read_magic
    return path.is_file() and read_magic(path) == TOKENIZER_MAGIC


def encode_prompt(text: str) -> list[int]:
    """GPT-2 BPE tokens of text (tiktoken; llm.c's tokenizer file only decodes)."""
    from llmc.data.tokenizer import encode
    return [int(t) for t in encode(text)]

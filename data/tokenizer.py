"""GPT-2's tokenizer: tiktoken's BPE, built offline from the merge ranks the package ships.

The ranks file is tiktoken's r50k_base (= "gpt2"), checked by sha256; with GPT-2's split regex and
<|endoftext|> = 50256 the Encoding is exactly tiktoken.get_encoding("gpt2"), with no download. The
same ranks rebuild Hugging Face's GPT-2 tokenizer files (vocab.json, merges.txt) for exported checkpoints.
"""

import base64
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import tiktoken

from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write

ASSETS = Path(__file__).resolve().parent / "assets"
RANKS_FILE = ASSETS / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenizer regex, written with possessive quantifiers (same splits, faster)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = 50256  # <|endoftext|>: llm.c puts it before every document
VOCAB_SIZE = 50257


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    try:
        data = RANKS_FILE.read_bytes()
    except OSError as e:
        raise LlmcError(f"{RANKS_FILE}: cannot read the shipped GPT-2 ranks ({e.strerror}); reinstall llmc") from None
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise LlmcError(f"{RANKS_FILE}: sha256 mismatch, the shipped GPT-2 ranks are corrupted; reinstall llmc")
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=VOCAB_SIZE)


def encode(text: str) -> np.ndarray:
    """Ordinary encoding (special-token text stays text, as llm.c's encode_ordinary) as uint32."""
    enc = gpt2_encoding()
    try:  # straight into a numpy buffer: no list of Python ints
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates: encode_ordinary repairs them the way tiktoken does
        return np.asarray(enc.encode_ordinary(text), dtype=np.uint32)


def encode_documents(texts: list[str]) -> tuple[int, np.ndarray]:
    """(number of documents, uint16 tokens [EOT, doc 0..., EOT, doc 1..., ...]): llm.c's separation."""
    eot = np.array([EOT], dtype=np.uint32)
    parts = []
    for text in texts:
        parts += (eot, encode(text))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return len(texts), tokens.astype(np.uint16)


def tiktoken_token_bytes(enc: tiktoken.Encoding) -> Callable[[int], bytes | None]:
    """An id's bytes in a tiktoken encoding; None for an id it does not know (a padded vocab's)."""
    def token_bytes(token: int) -> bytes | None:
        try:
            return enc.decode_single_token_bytes(token)
        except KeyError:
            return None
    return token_bytes


def byte_level_alphabet() -> dict[int, str]:
    """Byte-level BPE's alphabet (GPT-2's, and Hugging Face's ByteLevel in Llama 3's tokenizer.json): each byte
    as a printable character, the printable bytes as themselves, the others as U+0100 on, in order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return {b: chr(b if b in printable else next(others)) for b in range(256)}


def write_hf_tokenizer(out_dir: str | os.PathLike, max_seq_len: int) -> list[Path]:
    """GPT-2's vocab.json + merges.txt + tokenizer_config.json, rebuilt offline from tiktoken's ranks:
    each merge is the last pair BPE joins when encoding that token with lower-ranked merges only."""
    ranks = gpt2_encoding()._mergeable_ranks
    char = byte_level_alphabet()

    def text(b: bytes) -> str:
        return "".join(char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([x]) for x in token]
        while len(parts) > 2:
            i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], rank))
            parts[i: i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append(f"{text(parts[0])} {text(parts[1])}")
    vocab = {text(token): rank for token, rank in ranks.items()} | {"<|endoftext|>": EOT}
    special = "<|endoftext|>"
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_seq_len,
                                             "bos_token": special, "eos_token": special, "unk_token": special,
                                             "add_prefix_space": False}, indent=2),
    }
    out = []
    for name, content in files.items():
        with atomic_write(Path(out_dir) / name) as f:
            f.write(content.encode("utf-8"))
        out.append(Path(out_dir) / name)
    return out

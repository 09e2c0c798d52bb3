"""Llama 3's tokenizer for `llmc prepro -m llama-3` (and for decoding what a Llama trained on those shards
samples), loaded from a path the user gives (never downloaded).

Either a Hugging Face tokenizer folder (tokenizer.json, ...: what llm.c's llama3 dev/data scripts load
as meta-llama/Meta-Llama-3.1-8B), read by transformers' AutoTokenizer or else the tokenizers library,
or Meta's tokenizer.model (tiktoken BPE ranks), built as Meta's llama3 tokenizer.py (llm.c's
train_llama3.py Tokenizer) builds it: Llama 3's split regex and 256 special tokens numbered from the
end of the ranks (<|begin_of_text|> = 128000, <|end_of_text|> = 128001, ...). Both encode a document
as llm.c does, tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True): special-token
text stays text. llm.c's document delimiter is tokenizer.encode('')[0], the BOS token (128000).
"""

import base64
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.data.sources import _first_line
from llmc.data.tokenizer import byte_level_alphabet, tiktoken_token_bytes

PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
SPECIAL_TOKENS += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(SPECIAL_TOKENS))]
HINT = "--tokenizer takes a Hugging Face tokenizer folder or Meta's tokenizer.model"


@dataclass(frozen=True)
class Llama3Tokenizer:
    bos: int  # tokenizer.encode('')[0]: llm.c puts it before every document
    encode: Callable[[str], np.ndarray]  # text -> uint32 ids, special-token text as text, no BOS
    token_bytes: Callable[[int], bytes | None]  # an id's bytes (a special token's text), None if unknown


def byte_level_token_bytes(token_text: Callable[[int], str | None]) -> Callable[[int], bytes | None]:
    """An id's bytes from its byte-level token string; a special token's own text; None for an unknown id."""
    alphabet = {ch: b for b, ch in byte_level_alphabet().items()}  # character -> byte

    def token_bytes(token: int) -> bytes | None:
        text = token_text(token)
        if text is None:
            return None
        if all(ch in alphabet for ch in text):
            return bytes(alphabet[ch] for ch in text)
        return text.encode()  # an added token (<|begin_of_text|>, ...): not byte-level encoded
    return token_bytes


def repaired(text: str) -> str:
    """Lone surrogates (JSON escapes) as U+FFFD, the repair tiktoken's encode_ordinary makes."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def hf_tokenizer(path: Path, encode: Callable[[str], list[int]], encode_with_bos: Callable[[str], list[int]],
                 token_text: Callable[[int], str | None]) -> Llama3Tokenizer:
    """llm.c's use of a Hugging Face tokenizer: `encode` for documents, encode_with_bos('')[0] between them;
    token_text(id) the token's byte-level string."""
    bos = encode_with_bos("")
    if not bos:
        raise LlmcError(f"{path}: the tokenizer adds no BOS token (encode('') is empty), which llm.c puts before "
                        f"every document")

    def encode_ids(text: str) -> np.ndarray:
        try:
            ids = encode(text)
        except TypeError:  # the Rust tokenizer takes no lone surrogates
            ids = encode(repaired(text))
        return np.asarray(ids, dtype=np.uint32)

    return Llama3Tokenizer(bos[0], encode_ids, byte_level_token_bytes(token_text))


def hf_folder(path: Path) -> Llama3Tokenizer:
    """A Hugging Face tokenizer folder, through transformers if installed, else the tokenizers library."""
    if not (path / "tokenizer.json").is_file():  # Llama 3's folders all have it; transformers would guess without
        hint = f"pass Meta's file itself, {path / 'tokenizer.model'}" if (path / "tokenizer.model").is_file() else HINT
        raise LlmcError(f"{path}: no tokenizer.json in this folder; {hint}")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return tokenizers_folder(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # missing or malformed files: transformers raises many kinds
        raise LlmcError(f"{path}: not a Hugging Face tokenizer folder ({_first_line(e)}); {HINT}") from None
    return hf_tokenizer(path, lambda text: tok.encode(text, add_special_tokens=False, verbose=False,
                                                      split_special_tokens=True), tok.encode,
                        lambda token: tok.convert_ids_to_tokens(token) if token >= 0 else None)


def tokenizers_folder(path: Path) -> Llama3Tokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LlmcError("a Hugging Face tokenizer folder needs the tokenizers library: pip install 'llmc[data]' "
                        "(or transformers)") from None
    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:
        raise LlmcError(f"{path / 'tokenizer.json'}: not a Hugging Face tokenizer ({_first_line(e)})") from None
    tok.encode_special_tokens = True  # transformers' split_special_tokens=True
    return hf_tokenizer(path, lambda text: tok.encode(text, add_special_tokens=False).ids,
                        lambda text: tok.encode(text).ids, lambda token: tok.id_to_token(token) if token >= 0 else None)


def read_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE ranks file: a base64 token and its rank per line, ranks 0..n-1."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise LlmcError(f"{path}: cannot read ({e.strerror})") from None
    try:
        ranks = {base64.b64decode(token, validate=True): int(rank)
                 for token, rank in (line.split() for line in lines if line)}
    except ValueError:  # a line of other than 2 fields, bad base64 or a rank that is no integer
        ranks = {}
    if not ranks or sorted(ranks.values()) != list(range(len(ranks))):
        raise LlmcError(f"{path}: not a tiktoken BPE ranks file (Meta's tokenizer.model: base64 token and rank "
                        f"0..n-1 per line); {HINT}")
    return ranks


def tiktoken_model(path: Path) -> Llama3Tokenizer:
    """Meta's tokenizer.model: the ranks, Llama 3's regex, the special tokens right after the ranks."""
    import tiktoken

    ranks = read_ranks(path)
    special = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(path.name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=special)

    def encode(text: str) -> np.ndarray:
        try:  # straight into a numpy buffer: no list of Python ints
            return enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            return np.asarray(enc.encode_ordinary(text), dtype=np.uint32)

    return Llama3Tokenizer(special["<|begin_of_text|>"], encode, tiktoken_token_bytes(enc))


@functools.cache
def load(path: Path) -> Llama3Tokenizer:
    """The tokenizer at path: a folder is Hugging Face's, a file Meta's tokenizer.model."""
    if path.is_dir():
        return hf_folder(path)
    if path.is_file():
        return tiktoken_model(path)
    raise LlmcError(f"{path}: no such file or folder; {HINT}")


def encode_documents(path: Path, texts: list[str]) -> tuple[int, np.ndarray]:
    """(number of documents, uint32 tokens [BOS, doc 0..., BOS, doc 1..., ...]): llm.c's llama-3 separation."""
    tok = load(path)
    bos = np.array([tok.bos], dtype=np.uint32)
    parts = [part for text in texts for part in (bos, tok.encode(text))]
    return len(texts), np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)

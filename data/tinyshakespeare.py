"""TinyShakespeare (llm.c dev/data/tinyshakespeare.py): char-rnn's input.txt, 2 files.

Every blank-line-separated section is a document: EOT (llama-3: BOS), then the section with its
"\\n\\n" kept (all but the last; llm.c keeps this for backward compatibility). val = the first
32,768 tokens, train = the rest: tiny_shakespeare_val.bin, tiny_shakespeare_train.bin.
"""

from pathlib import Path

from llmc.core.errors import LlmcError
from llmc.data import PreproConfig, Written
from llmc.data.shards import TokenStream, text_pieces, tokenize, write_tokens
from llmc.data.sources import url_file
from llmc.data.tokenizer import ASSETS

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BUILTIN = ASSETS / "shakespeare.txt"  # seven plays from Project Gutenberg, not char-rnn's input.txt
VAL_TOKENS = 32768


def sections(text: str) -> list[str]:
    parts = text.split("\n\n")
    return [p + "\n\n" for p in parts[:-1]] + parts[-1:]


def read_text(path: Path) -> str:
    if not path.is_file():
        raise LlmcError(f"{path}: no such file" + (" (--input takes a text file here)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8")  # universal newlines, as llm.c's open(...).read()
    except UnicodeDecodeError as e:
        raise LlmcError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def prepare(cfg: PreproConfig) -> list[Written]:
    if cfg.builtin:
        path = BUILTIN
    else:  # llm.c downloads next to its .bin files; so do we
        path = cfg.input or url_file(URL, cfg.out_dir / "tiny_shakespeare.txt", cfg.progress)
    text = read_text(path)
    if not text.strip():
        raise LlmcError(f"{path}: empty text, nothing to tokenize")
    docs = sections(text)
    stream = TokenStream(tokenize(text_pieces(docs), cfg.workers, len(docs), cfg.name, cfg.progress, cfg.tokenizer))
    return [write_tokens(cfg.out_dir / "tiny_shakespeare_val.bin", stream.take(VAL_TOKENS), cfg.model_desc),
            write_tokens(cfg.out_dir / "tiny_shakespeare_train.bin", stream.take(None), cfg.model_desc)]

"""TinyStories (llm.c dev/data/tinystories.py): the 50 JSON files of TinyStories_all_data.tar.gz, 2 outputs.

Files in sorted order; the first is val, the rest train. Each file's stories are shuffled with
random.Random(1337 + the file's index within its split), stripped, and written as EOT (llama-3: BOS)
+ tokens: TinyStories_val.bin, TinyStories_train.bin. llm.c appends train files in the order its worker
processes happen to finish; here they stay in sorted order, so train is reproducible.
"""

import os
import random
import shutil
import tarfile
import tempfile
from functools import partial
from pathlib import Path

from llmc.core.errors import LlmcError
from llmc.data import PreproConfig, Written
from llmc.data.shards import TokenStream, tokenize, write_tokens
from llmc.data.sources import hub_file, local_files, parquet_rows, read_texts

REPO, ARCHIVE = "roneneldan/TinyStories", "TinyStories_all_data.tar.gz"
FIELDS = ("story", "text")  # llm.c's JSON files have "story"; the hub's parquet and most copies "text"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def extract(archive: Path, dest: Path) -> Path:
    """Unpack archive into dest once (into a temporary folder, renamed when complete)."""
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            # "data" filter: no absolute paths, links out or devices (Python >= 3.10.12 / 3.11.4)
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        os.replace(tmp, dest)
    except tarfile.TarError as e:
        raise LlmcError(f"{archive}: not a readable tar archive ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def source_files(cfg: PreproConfig) -> list[Path]:
    src = cfg.input or hub_file(REPO, ARCHIVE)
    if src.is_file() and src.name.endswith(ARCHIVE_SUFFIXES):
        src = extract(src, cfg.out_dir / "TinyStories_all_data")  # where llm.c unpacks it
    return local_files(src)


def stories(path: Path, seed: int) -> list[str]:
    """One file's stories in llm.c's order (a piece, read by the worker that tokenizes it)."""
    texts = list(read_texts(path, FIELDS))
    random.Random(seed).shuffle(texts)
    return [t.strip() for t in texts]


def prepare(cfg: PreproConfig) -> list[Written]:
    files = source_files(cfg)
    if len(files) < 2:
        raise LlmcError(f"{files[0]}: tinystories needs at least 2 files (the first is val, the rest train)")
    written = []
    for split, split_files in (("val", files[:1]), ("train", files[1:])):
        pieces = [partial(stories, path, 1337 + i) for i, path in enumerate(split_files)]
        tokens = tokenize(pieces, cfg.workers, parquet_rows(split_files), f"{cfg.name} {split}", cfg.progress,
                          cfg.tokenizer)
        stream = TokenStream(tokens)
        if stream.exhausted():
            raise LlmcError(f"{split_files[0].parent}: no stories in the {split} files")
        written.append(write_tokens(cfg.out_dir / f"TinyStories_{split}.bin", stream.take(None), cfg.model_desc))
    return written

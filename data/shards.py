"""Documents -> llm.c token shards: the pipeline every token-shard dataset shares.

The input arrives as pieces: functions returning a list of documents, read where they are tokenized.
A parquet row group is read by the worker that tokenizes it, so with many workers the main process
only writes; other text is read here and handed over in batches of about BATCH_CHARS characters.
Each piece becomes [EOT, doc tokens, EOT, doc tokens, ...] as one uint16 array (llama-3: BOS for
EOT, uint32), in input order: in this process, or with workers > 1 in a process pool with a bounded
number of pieces in flight, so memory stays flat however big the dataset. The token stream is then
cut into files, each streamed to a temporary name and renamed when complete, its header patched with
the final count.
"""

import signal
import time
from collections import deque
from contextlib import ExitStack
from functools import partial
from itertools import chain, islice
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from llmc.core.errors import LlmcError
from llmc.core.formats import SHARD_FORMATS, atomic_write, make_header, write_eval_shard
from llmc.data import Written, llama3_tokenizer
from llmc.data.sources import given, parquet_pieces, read_texts
from llmc.data.tokenizer import encode_documents, gpt2_encoding

BATCH_CHARS = 1 << 22  # text per piece read here: amortizes the pickling, small enough to stay flat
MAX_SHARD_TOKENS = 2**31 - 1  # the header's token count is an int32

Piece = Callable[[], list[str]]  # picklable (a partial of a module-level function)
# fork where there is one: workers inherit the loaded tokenizer instead of importing and building it
# (~0.5 CPU-s each, a tenth of a 50 MB job on 2 cores); the pool starts before any tokenizing and
# between reads, so no lock of the parent's threads (tqdm's monitor, pyarrow's pool) is held mid-use
START_METHOD = "fork" if "fork" in get_all_start_methods() else "spawn"


def text_pieces(texts: Iterable[str]) -> Iterator[Piece]:
    """Texts read here, in pieces of about BATCH_CHARS characters."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS:
            yield partial(given, batch)
            batch, chars = [], 0
    if batch:
        yield partial(given, batch)


def file_pieces(files: list[Path], fields: tuple[str, ...]) -> Iterator[Piece]:
    """The documents of files in order: parquet row groups, or the texts of JSON/JSONL in batches."""
    for path in files:
        yield from parquet_pieces(path, fields) if path.suffix == ".parquet" else text_pieces(read_texts(path, fields))


def load_tokenizer(tokenizer: Path | None) -> None:
    """GPT-2's tokenizer (None) or the Llama 3 tokenizer at a path, loaded into this process."""
    if tokenizer is None:
        gpt2_encoding()
    else:
        llama3_tokenizer.load(tokenizer)


def init_worker(tokenizer: Path | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it ends the pool
    load_tokenizer(tokenizer)


def encode_piece(tokenizer: Path | None, piece: Piece) -> tuple[int, np.ndarray]:
    texts = piece()
    return encode_documents(texts) if tokenizer is None else llama3_tokenizer.encode_documents(tokenizer, texts)


def in_order(pool: Pool, pieces: Iterable[Piece], window: int, tokenizer: Path | None,
             ) -> Iterator[tuple[int, np.ndarray]]:
    """encode_piece over the pieces in the pool, results in order, at most `window` in flight."""
    pending = deque()
    for piece in pieces:
        pending.append(pool.apply_async(encode_piece, (tokenizer, piece)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def tokenize(pieces: Iterable[Piece], workers: int = 1, total: int | None = None, desc: str = "tokenizing",
             progress: bool = True, tokenizer: Path | None = None) -> Iterator[np.ndarray]:
    """Each document as EOT + its GPT-2 tokens, concatenated into uint16 arrays, in document order; with
    a Llama 3 tokenizer (its path), BOS + its tokens in uint32 arrays."""
    pieces = iter(pieces)
    first = list(islice(pieces, 2))  # a single piece is not worth starting a pool
    pieces = chain(first, pieces)
    load_tokenizer(tokenizer)  # loaded before any fork: forked workers inherit it
    with ExitStack() as stack:
        if workers > 1 and len(first) > 1:
            pool = stack.enter_context(get_context(START_METHOD).Pool(workers, initializer=init_worker,
                                                                      initargs=(tokenizer,)))
            results = in_order(pool, pieces, 2 * workers, tokenizer)
        else:
            results = map(partial(encode_piece, tokenizer), pieces)
        bar = stack.enter_context(tqdm(total=total, unit="doc", unit_scale=True, desc=desc, disable=not progress,
                                       dynamic_ncols=True))
        start, ntok = time.perf_counter(), 0
        for ndocs, tokens in results:
            ntok += tokens.size
            bar.update(ndocs)
            bar.set_postfix_str(f"{ntok / (time.perf_counter() - start):,.0f} tok/s", refresh=False)
            yield tokens


class TokenStream:
    """A stream of token arrays that can be cut at exact token counts."""

    def __init__(self, chunks: Iterable[np.ndarray]):
        self._chunks = iter(chunks)
        self._head = np.zeros(0, dtype=np.uint16)  # the part of the current chunk not taken yet

    def exhausted(self) -> bool:
        while not self._head.size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._head = chunk
        return False

    def take(self, n: int | None) -> Iterator[np.ndarray]:
        """The next n tokens (all that are left if n is None), as consecutive arrays."""
        while (n is None or n > 0) and not self.exhausted():
            k = self._head.size if n is None else min(n, self._head.size)
            yield self._head[:k]
            self._head = self._head[k:]
            n = None if n is None else n - k


def write_tokens(path: Path, chunks: Iterable[np.ndarray], model_desc: str = "gpt-2") -> Written:
    """One llm.c token shard from a stream of token arrays (uint16 for gpt-2, uint32 for llama-3), never
    whole in memory."""
    magic, version, dtype = SHARD_FORMATS[model_desc]
    ntok = 0
    with atomic_write(path) as f:
        f.write(make_header(magic, version, 0).tobytes())  # count patched below
        for chunk in chunks:
            ntok += chunk.size
            if ntok > MAX_SHARD_TOKENS:
                raise LlmcError(f"{path}: more than {MAX_SHARD_TOKENS:,} tokens do not fit llm.c's int32 count")
            if chunk.size and chunk.max() > np.iinfo(dtype).max:  # llm.c asserts this too: no id may wrap
                raise LlmcError(f"{path}: token id {chunk.max()} does not fit {model_desc}'s {np.dtype(dtype).name}")
            f.write(chunk.astype(dtype, copy=False).data)
        f.seek(0)
        f.write(make_header(magic, version, ntok).tobytes())
    return Written(path, ntok, "tokens")


def write_sharded(tokens: Iterable[np.ndarray], out_dir: Path, name: str, shard_size: int,
                  model_desc: str = "gpt-2") -> list[Written]:
    """fineweb.py's layout: the stream cut every shard_size tokens (the last shard keeps the rest) into
    {name}_val_000000.bin, {name}_train_000001.bin, ... A document may straddle two shards."""
    if not 0 < shard_size <= MAX_SHARD_TOKENS:
        raise LlmcError(f"shard size must be between 1 and {MAX_SHARD_TOKENS:,} tokens, not {shard_size:,}")
    stream, written = TokenStream(tokens), []
    while not stream.exhausted():
        i = len(written)
        path = out_dir / f"{name}_{'val' if i == 0 else 'train'}_{i:06d}.bin"
        written.append(write_tokens(path, stream.take(shard_size), model_desc))
    return written


def write_examples(path: Path, rows: Iterable, example: Callable, source: object, desc: str,
                   progress: bool) -> Written:
    """An eval file (HellaSwag, MMLU) from (row, where) pairs: example(index, row, where) -> EvalExample."""
    rows = tqdm(rows, unit="ex", desc=desc, disable=not progress)
    examples = [example(i, row, where) for i, (row, where) in enumerate(rows)]
    if not examples:
        raise LlmcError(f"{source}: no examples")
    write_eval_shard(path, examples)
    return Written(path, len(examples), "examples")

"""Where datasets come from: the Hugging Face hub, a plain URL, or local files (parquet, JSONL, JSON).

Hub downloads go through huggingface_hub: cached, resumable, HF_HUB_OFFLINE honored. Files that
are not on the hub (llm.c fetches them from GitHub) are downloaded once into the output folder, as
llm.c keeps them beside its .bin files. pyarrow is imported only when a parquet file is read.
"""

import json
import urllib.request
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write

SUFFIXES = (".parquet", ".jsonl", ".json")
ROW_GROUP_BYTES = 256 << 20  # larger parquet row groups are split up rather than read whole by a worker


def offline() -> bool:
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _hub_error(what: str, e: Exception) -> LlmcError:
    hint = "pass --input PATH to use local files"
    if offline():
        return LlmcError(f"{what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    return LlmcError(f"could not download {what} from the Hugging Face hub ({_first_line(e)}); {hint}")


def hub_file(repo_id: str, filename: str) -> Path:
    """One file of a hub dataset repo, from the cache or downloaded into it."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as e:  # network, HTTP, offline-cache misses: all mean "use --input"
        raise _hub_error(f"hf://datasets/{repo_id}/{filename}", e) from None


def hub_files(repo_id: str, pattern: str) -> list[Path]:
    """The files of a hub dataset repo matching a glob pattern, sorted by path (the datasets library's order)."""
    from huggingface_hub import snapshot_download
    try:
        root = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=pattern))
    except Exception as e:
        raise _hub_error(f"hf://datasets/{repo_id}/{pattern}", e) from None
    files = sorted(root.glob(pattern))
    if not files:
        raise LlmcError(f"hf://datasets/{repo_id}: no files match {pattern}")
    return files


def url_file(url: str, dest: Path, progress: bool = True) -> Path:
    """Download url to dest unless it is already there."""
    if dest.exists():
        return dest
    hint = "pass --input PATH (a local copy of it)"
    if offline():
        raise LlmcError(f"{url} is not downloaded to {dest} yet and HF_HUB_OFFLINE is set; {hint}")
    try:
        resp = urllib.request.urlopen(url, timeout=60)
    except OSError as e:
        raise LlmcError(f"could not download {url} ({_first_line(e)}); {hint}") from None
    size = int(resp.headers.get("content-length") or 0) or None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
    with resp, atomic_write(dest) as f, bar:
        while chunk := resp.read(1 << 20):
            f.write(chunk)
            bar.update(len(chunk))
    return dest


def local_files(path: Path, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """`path` itself, or the files with one of `suffixes` under the folder `path`, sorted by relative path."""
    if not path.exists():
        raise LlmcError(f"{path}: no such file or folder")
    if path.is_file():
        if not path.name.endswith(suffixes):
            raise LlmcError(f"{path}: unsupported file type (expected {', '.join(suffixes)})")
        return [path]
    files = sorted((p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise LlmcError(f"{path}: no {', '.join(suffixes)} files in this folder")
    return files


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LlmcError("reading parquet needs pyarrow: pip install 'llmc[data]' (or pip install pyarrow)") from None
    return pq


def parquet_rows(paths: list[Path]) -> int | None:
    """Total rows of a list of parquet files, from their footers (None if any is not parquet)."""
    if not all(p.suffix == ".parquet" for p in paths):
        return None
    return sum(open_parquet(p).metadata.num_rows for p in paths)


def read_rows(path: Path, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Rows of a parquet, JSONL or JSON (a list of objects) file; parquet reads only `columns`."""
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, columns)
        return
    try:
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                rows = (json.loads(line) for line in f if line.strip())
            else:
                rows = json.load(f)
                if not isinstance(rows, list):
                    raise LlmcError(f"{path}: expected a JSON list of objects, got a {type(rows).__name__}")
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise LlmcError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
                yield row
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmcError(f"{path}: not valid {path.suffix[1:].upper()} ({_first_line(e)})") from None


@contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except LlmcError:
        raise
    except Exception as e:  # pyarrow's ArrowException, OSError: a broken or foreign file
        raise LlmcError(f"{path}: unreadable parquet ({_first_line(e)})") from None


def open_parquet(path: Path):
    pq = _parquet()
    with _parquet_errors(path):
        return pq.ParquetFile(path)


def _parquet_rows(path: Path, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    pf = open_parquet(path)
    present = [c for c in columns if c in pf.schema_arrow.names]
    if not present:
        raise LlmcError(f"{path}: no column {' or '.join(columns)} (it has {', '.join(pf.schema_arrow.names)})")
    with _parquet_errors(path):
        for batch in pf.iter_batches(batch_size=1024, columns=present):
            yield from batch.to_pylist()


def given(texts: list[str]) -> list[str]:
    """A piece of input read already."""
    return texts


def parquet_pieces(path: Path, fields: tuple[str, ...]) -> Iterator[Callable[[], list[str]]]:
    """The texts of a parquet file as pieces, one a row group, read by whoever calls the piece.
    Row groups over ROW_GROUP_BYTES are read here in batches instead, so no process holds one whole."""
    import pyarrow as pa

    pf = open_parquet(path)
    schema = pf.schema_arrow
    column = next((f for f in fields if f in schema.names), None)
    if column is None:
        raise LlmcError(f"{path}: no column {' or '.join(fields)} (it has {', '.join(schema.names)})")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise LlmcError(f"{path}: column {column!r} holds {kind}, not text")
    for i in range(pf.num_row_groups):
        if pf.metadata.row_group(i).total_byte_size <= ROW_GROUP_BYTES:
            yield partial(row_group_texts, path, i, column)
            continue
        with _parquet_errors(path):
            for batch in pf.iter_batches(batch_size=4096, row_groups=[i], columns=[column]):
                yield partial(given, _texts(batch.column(0), path, column))


def row_group_texts(path: Path, i: int, column: str) -> list[str]:
    with _parquet_errors(path):
        values = open_parquet(path).read_row_group(i, columns=[column]).column(0)
    return _texts(values, path, column)


def _texts(values, path: Path, column: str) -> list[str]:
    if values.null_count:
        raise LlmcError(f"{path}: {values.null_count} rows have no {column!r} (null)")
    return values.to_pylist()


def read_texts(path: Path, fields: tuple[str, ...]) -> Iterator[str]:
    """The text of each row: its first field among `fields` that is present."""
    for i, row in enumerate(read_rows(path, fields)):
        field = next((f for f in fields if f in row), None)
        if field is None:
            raise LlmcError(f"{path}: row {i} has no field {' or '.join(fields)}")
        if not isinstance(row[field], str):
            raise LlmcError(f"{path}: row {i}: {field!r} is a {type(row[field]).__name__}, expected text")
        yield row[field]


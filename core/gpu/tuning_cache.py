"""The disk cache of tuned choices (cuBLASLt's algorithms, the GELU GEMM's cuBLASLt-or-cuDNN plan),
per GPU and cuBLASLt version, so later runs start untimed with the same choices: one JSON file,
~/.cache/llmc/cublaslt_algorithms.json (LLMC_CACHE_DIR moves it). A missing, malformed or unwritable
file is only a cache: the next run times again."""

import functools
import json
import os
from pathlib import Path

from llmc.core.gpu.runtime import current


def _cache_file() -> Path:
    return Path(os.environ.get("LLMC_CACHE_DIR") or Path.home() / ".cache" / "llmc") / "cublaslt_algorithms.json"


@functools.cache
def _device_tag() -> str:
    from nvmath.bindings import cublasLt as lt  # cublaslt.py checked it is installed

    gpu = current()
    return f"{gpu.name} sm{gpu.compute_capability} cublasLt {lt.get_version()}"


def _load_cache() -> dict:
    try:
        cache = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _read_cache(cache: dict | None = None) -> dict:
    """The disk cache's entries for this GPU and cuBLASLt; nothing if it is missing or malformed."""
    entries = (_load_cache() if cache is None else cache).get(_device_tag())
    return entries if isinstance(entries, dict) else {}


def cached(key: str):
    """The choice kept on disk under key for this GPU and cuBLASLt, or None."""
    return _read_cache().get(key)


def remember(key: str, value: list) -> None:
    """Adds one tuned choice to the disk cache (re-read first, other processes may have written it);
    a cache that cannot be written is only a cache: the next run times again."""
    path = _cache_file()
    cache = _load_cache()
    cache[_device_tag()] = {**_read_cache(cache), key: value}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:
        pass


def first_run_note() -> str | None:
    """One line for a start on a GPU (and cuBLASLt) the cache holds nothing for, None otherwise: the first
    step will time cuBLASLt's algorithms for every GEMM shape and compile llmc's kernels, once."""
    if _read_cache():
        return None
    return (f"first run on this {current().name}: the first step times cuBLASLt's algorithms for each GEMM shape "
            f"and compiles llmc's kernels, once (~15 s for GPT-2 124M on an H200); later runs read {_cache_file()}")

"""Backend selection by name: an explicit map, never a silent fallback to the CPU."""

import importlib
from types import ModuleType

from llmc.core.errors import LlmcError

BACKENDS = {"cpu": "llmc.core.cpu", "gpu": "llmc.core.gpu"}


def get_backend(name: str) -> ModuleType:
    """The backend module, ready to run: the GPU backend takes its GPU (the one core.distributed chose
    for this rank, else GPU 0)."""
    if name not in BACKENDS:
        raise LlmcError(f"unknown device {name!r}: use {' or '.join(BACKENDS)}")
    backend = importlib.import_module(BACKENDS[name])
    if name == "gpu":
        backend.runtime.init()
    return backend

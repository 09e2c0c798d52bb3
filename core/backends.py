"""Backend selection by name: an explicit map, never a silent fallback to the CPU."""

import importlib
from types import ModuleType

from llmc.core.errors import LlmcError

BACKENDS = {"cpu": "llmc.core.cpu", "gpu": "llmc.core.gpu"}


def get_backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise LlmcError(f"unknown device {name!r}: use {' or '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])

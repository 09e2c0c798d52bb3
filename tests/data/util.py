"""Helpers for the prepro tests: llm.c's rules written out plainly, read-backs by hand, the CLI."""

from pathlib import Path

import numpy as np

EOT = 50256
# the copies the repository ships (the tests read nothing outside the clone)
ASSETS = Path(__file__).resolve().parents[2] / "data/assets"


def docs_tokens(enc, texts) -> np.ndarray:
    """llm.c's document separation, written out plainly: EOT before every document."""
    out = []
    for t in texts:
        out += [EOT] + enc.encode_ordinary(t)
    return np.array(out, dtype=np.uint16)


def shard_tokens(path: Path) -> np.ndarray:
    """A token shard read by hand from llm.c's layout (header of 256 int32, then uint16 tokens)."""
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert (header[0], header[1]) == (20240520, 1)
    assert not header[3:].any()
    tokens = np.frombuffer(raw[1024:], dtype="<u2")
    assert header[2] == tokens.size
    return tokens


def run_prepro(*args: str):
    """`llmc prepro ARGS` in this process; returns click's Result."""
    from click.testing import CliRunner

    from llmc.cli.main import main

    return CliRunner().invoke(main, ["prepro", *args, "-q"])

"""Helpers for the prepro tests: llm.c's rules written out plainly, read-backs by hand, the CLI."""

from pathlib import Path

import numpy as np

EOT = 50256
# llm.c's data_common.py HEADERS_INFO: model descriptor -> (magic, version, token dtype)
SHARD_KINDS = {"gpt-2": (20240520, 1, "<u2"), "llama-3": (20240801, 7, "<u4")}
# the copies the repository ships (the tests read nothing outside the clone)
ASSETS = Path(__file__).resolve().parents[2] / "data/assets"


def docs_tokens(enc, texts, eot: int = EOT) -> np.ndarray:
    """llm.c's document separation, written out plainly: EOT (llama-3: BOS) before every document."""
    out = []
    for t in texts:
        out += [eot] + enc.encode_ordinary(t)
    return np.array(out, dtype=np.int64)


def shard_tokens(path: Path, model_desc: str = "gpt-2") -> np.ndarray:
    """A token shard read by hand from llm.c's layout (header of 256 int32, then uint16 or uint32 tokens)."""
    magic, version, dtype = SHARD_KINDS[model_desc]
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert (header[0], header[1]) == (magic, version)
    assert not header[3:].any()
    tokens = np.frombuffer(raw[1024:], dtype=dtype)
    assert header[2] == tokens.size
    return tokens


def run_prepro(*args: str):
    """`llmc prepro ARGS` in this process; returns click's Result."""
    from click.testing import CliRunner

    from llmc.cli.main import main

    return CliRunner().invoke(main, ["prepro", *args, "-q"])


def one_error_line(result) -> str:
    """The one line a failed command prints (exit code 1, no traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    return lines[0]

"""`train-gpu -y 1` continues exactly: a run checkpointed half way, cut there and resumed writes the main.log and
the last model file of the run it was cut from, bf16 and -f8 1 alike (on the CPU: tests/core/test_checkpoint.py
and the FP8 resume test). The first run times cuBLASLt's algorithms into a fresh cache; the resumed one reads
them back from it, as a real resume does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import gpu  # noqa: E402,F401  (skips without a GPU)

from llmc.core.config import GPTConfig  # noqa: E402
from llmc.tests.core.training_data import write_model_and_shards  # noqa: E402

pytestmark = pytest.mark.gpu
CFG = GPTConfig(max_seq_len=64, vocab_size=200, padded_vocab_size=256, num_layers=2, num_heads=4, channels=128)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_model_and_shards(tmp_path_factory.mktemp("data"), CFG, 20000, 5000, seed=4)


def train(data: Path, out: Path, cache: Path, *extra: str) -> None:
    argv = ["-e", data / "model.bin", "-i", data / "train.bin", "-j", data / "val.bin", "-b", 4, "-t", 64,
            "-x", 8, "-l", 1e-3, "-v", 4, "-m", 2, "-s", 0, "-n", 4, "-o", out, *extra]
    proc = subprocess.run([sys.executable, "-m", "llmc", "train-gpu", *map(str, argv)], capture_output=True,
                          text=True, env={**os.environ, "LLMC_CACHE_DIR": str(cache)}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("fp8", ["0", "1"])
def test_a_resumed_run_is_the_run_it_was_cut_from(data, tmp_path, fp8):
    out = tmp_path / "run"
    train(data, out, tmp_path / "cache", "-f8", fp8)
    straight_log, straight_model = (out / "main.log").read_bytes(), (out / "model_00000008.bin").read_bytes()
    for name in ("DONE_00000008", "model_00000008.bin", "state_00000008_00000.bin"):
        (out / name).unlink()
    train(data, out, tmp_path / "cache", "-f8", fp8, "-y", "1")
    assert (out / "main.log").read_bytes() == straight_log
    assert (out / "model_00000008.bin").read_bytes() == straight_model

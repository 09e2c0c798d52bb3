"""Data parallel `llmc train-gpu` over NCCL, each rank its own process (-pi fs): 2 GPUs with -z 1
against one GPU with the same total batch (losses within bf16 noise, each rank's optimizer state half
of one GPU's), a killed rank stopping the other, an exact resume of both, and -pn 1 against the plain
single-GPU path (identical losses)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    GPUS = cp.cuda.runtime.getDeviceCount()
except Exception:  # CUDA driver or runtime missing
    GPUS = 0

from llmc.core.config import GPTConfig  # noqa: E402
from llmc.core.formats import HEADER_BYTES  # noqa: E402
from llmc.tests.core.training_data import write_model_and_shards  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU")]
CFG = GPTConfig(max_seq_len=64, vocab_size=200, padded_vocab_size=256, num_layers=2, num_heads=4, channels=128)
STEP = re.compile(r"step +(\d+)/\d+ \| loss ([\d.]+) .*\| norm ([\d.]+)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_model_and_shards(tmp_path_factory.mktemp("data"), CFG, 20000, 5000, seed=3)


def args(data: Path, out: Path, B: int, *extra) -> list[str]:
    # -a 1: one GPU with batch 2B reads exactly the tokens of ranks 0 and 1 with B each (no shuffling)
    base = ["-e", data / "model.bin", "-i", data / "train.bin", "-j", data / "val.bin", "-b", B, "-t", 64,
            "-d", 8 * 64, "-x", 10, "-l", 1e-3, "-c", 0.1, "-v", 5, "-m", 2, "-s", 0, "-a", 1, "-o", out, "-n", 10]
    return [sys.executable, "-c", "from llmc.cli.main import main; main()", "train-gpu"] + \
        [str(a) for a in base + list(extra)]


def launch(commands: list[list[str]]) -> list[str]:
    """Run the commands at once; each one's output (all must succeed)."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outputs):
        assert p.returncode == 0, o
    return outputs


def losses(output: str) -> np.ndarray:
    return np.array([[float(m[2]), float(m[3])] for m in STEP.finditer(output)])


def state_floats(path: Path) -> int:
    return (path.stat().st_size - HEADER_BYTES) // 4


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_two_gpus_zero1_match_one_gpu(data, tmp_path):
    (one,) = launch([args(data, tmp_path / "one", 8)])
    two = launch([args(data, tmp_path / "two", 4, "-pn", 2, "-pr", r, "-pi", "fs", "-pf", tmp_path, "-z", 1)
                  for r in range(2)])
    assert "step " not in two[1]  # rank 1 prints no step lines
    want, got = losses(one), losses(two[0])
    assert want.shape == got.shape == (10, 2)
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02)  # bf16 gradients, another reduction order
    # per-rank optimizer state (m, v, master: the state file's floats besides the small trailer) is half
    full = state_floats(tmp_path / "one" / "state_00000010_00000.bin")
    for r in range(2):
        part = state_floats(tmp_path / "two" / f"state_00000010_{r:05d}.bin")
        assert abs(part / full - 0.5) < 0.01


def test_one_process_group_is_the_single_gpu_path(data, tmp_path):
    (plain,) = launch([args(data, tmp_path / "plain", 8)])
    (pn1,) = launch([args(data, tmp_path / "pn1", 8, "-pn", 1, "-pr", 0, "-pi", "tcp", "-z", 1)])
    np.testing.assert_array_equal(losses(pn1), losses(plain))


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_a_killed_rank_stops_the_other_within_a_minute(data, tmp_path):
    """Rank 1 killed in the middle of the run: rank 0, waiting in NCCL for it, exits non-zero with one line
    within --rank-timeout (here 5 s), not never."""
    commands = [args(data, tmp_path / "run", 4, "-pn", 2, "-pr", r, "-pi", "fs", "-pf", tmp_path, "-z", 1, "-x", 100000,
                     "-v", 0, "-n", 0, "--rank-timeout", 5) for r in range(2)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    try:
        for line in procs[0].stdout:  # rank 0's step lines: kill rank 1 once the run is well under way
            if (m := STEP.match(line)) and int(m[1]) >= 50:
                break
        procs[1].kill()
        killed = time.monotonic()
        rest = procs[0].communicate(timeout=60)[0]
        stopped = time.monotonic()
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode not in (0, None)
    assert stopped - killed < 60
    errors = [ln for ln in rest.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "rank-timeout" in errors[0], rest[-2000:]


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_two_ranks_resume_exactly(data, tmp_path):
    """Two ranks with -z 1 checkpointed at step 5 and cut there resume to the run they were cut from: rank 0's
    main.log and the last model file byte for byte."""
    def run(*extra) -> None:
        launch([args(data, tmp_path / "run", 4, "-pn", 2, "-pr", r, "-pi", "fs", "-pf", tmp_path, "-z", 1, "-n", 5,
                     *extra) for r in range(2)])

    out = tmp_path / "run"
    run()
    log, model = (out / "main.log").read_bytes(), (out / "model_00000010.bin").read_bytes()
    for name in ("DONE_00000010", "model_00000010.bin", "state_00000010_00000.bin", "state_00000010_00001.bin"):
        (out / name).unlink()
    run("-y", 1)
    assert (out / "main.log").read_bytes() == log
    assert (out / "model_00000010.bin").read_bytes() == model

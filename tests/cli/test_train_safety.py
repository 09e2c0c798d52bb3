"""`llmc train-cpu` on bad input (one line on stderr, exit 1, nothing written damaged), and runs killed
with SIGKILL, SIGINT and SIGTERM: the newest complete checkpoint always loads and resumes exactly."""

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core import checkpoint
from llmc.core.config import num_parameters
from llmc.core.formats import EvalExample, read_model, write_eval_shard, write_shard
from llmc.tests.core.training_data import CFG, write_training_data

# the child runs llmc's CLI; KILL_AT_REPLACE=k makes it SIGKILL itself just before its k-th file rename
CHILD = """
import os, signal, sys
from llmc.cli.main import main
kill_at, calls, rename = int(os.environ.get("KILL_AT_REPLACE", "0")), [0], os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)
os.replace = replace
main(sys.argv[1:], prog_name="llmc")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_training_data(tmp_path_factory.mktemp("data"))


def args(data: Path, out: Path | None, *extra) -> list[str]:
    base = ["-e", data / "model.bin", "-i", data / "train_*.bin", "-j", data / "val.bin", "-b", 4, "-t", 16,
            "-v", 10, "-m", 2, "-s", 0, "-l", 1e-3]
    return [str(a) for a in base + (["-o", out] if out else []) + list(extra)]


def train(*argv: str):
    return CliRunner().invoke(main, ["train-cpu", *argv])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# files that record one invocation (its pid, command line, timings) rather than what was trained
RECORDS = (".llmc.lock", "config.json", "metrics.csv")


def digest(d: Path, records: bool = False) -> dict[str, str]:
    """sha256 of what a run trained and logged: checkpoints and main.log (and RECORDS, if asked)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file() and (records or p.name not in RECORDS)}


def metrics_without_timings(d: Path) -> list[list[str]]:
    """metrics.csv's rows less the columns that time the step (ms, tok/s, MFU)."""
    rows = [ln.split(",") for ln in (d / "metrics.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in ("ms", "tok_per_s", "mfu")]
    return [[row[i] for i in keep] for row in rows]


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs(data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good_model = (data / "model.bin").read_bytes()
    (bad / "magic.bin").write_bytes(b"\0\0\0\0" + good_model[4:])
    (bad / "version.bin").write_bytes(good_model[:4] + np.int32(4).tobytes() + good_model[8:])
    (bad / "short.bin").write_bytes(good_model[:-10])
    write_shard(bad / "vocab.bin", np.full(300, CFG.vocab_size + 3))
    shard = (data / "val.bin").read_bytes()
    (bad / "short_shard.bin").write_bytes(shard[:-4])
    (bad / "magic_shard.bin").write_bytes(b"\1\0\0\0" + shard[4:])
    (bad / "file").write_text("")
    cases = [
        (["-e", bad / "magic.bin"], "bad magic"),
        (["-e", bad / "version.bin"], "version 4"),
        (["-e", bad / "short.bin"], "truncated"),
        (["-e", bad / "missing.bin"], "No such file"),
        (["-i", bad / "vocab.bin"], "token id 104 is outside the model's vocab of 101"),
        (["-j", bad / "vocab.bin"], "token id 104"),
        (["-i", bad / "short_shard.bin"], "truncated"),
        (["-i", bad / "magic_shard.bin"], "bad magic"),
        (["-i", bad / "nothing_*.bin"], "no files found matching"),
        (["-t", 64], "larger than the model's max_seq_len 32"),
        (["-d", 100], "multiple of B*T"),
        (["-b", -4, "-d", 64], "-b and -t take sizes >= 1"),
        (["-m", 0], "-m a number of batches"),
        (["-sl", -1], "-sl takes a finite number >= 0, not -1.0"),
        (["-sg", "nan"], "-sg takes a finite number >= 0, not nan"),
        (["-l", "nan"], "-l takes a finite number >= 0, not nan"),
        (["-l", "inf"], "-l takes a finite number >= 0, not inf"),
        (["-l", -1e-3], "-l takes a finite number >= 0"),
        (["-q", "nan"], "-q takes a finite number"),
        (["-c", "-inf"], "-c takes a finite number"),
        (["-u", -5], "-u takes a number of warmup steps >= 0, not -5"),
        (["-x", 0], "-x takes a number of steps >= 1 (or -1: one epoch of -i), not 0"),
        (["-x", -3], "-x takes a number of steps >= 1 (or -1: one epoch of -i), not -3"),
        (["-v", -1], "-v takes a number of steps >= 0 (0 = no validation)"),
        (["--rank-timeout", 0], "--rank-timeout takes a number of seconds > 0, not 0.0"),
        (["--rank-timeout", "nan"], "--rank-timeout takes a number of seconds > 0, not nan"),
        (["-o", tmp_path / "o", "-y", 1, "--overwrite"], "give one of them"),
        (["-e", "d4:c10:h3"], "channels 10 not divisible by heads 3"),
        (["-e", "d4:c16"], "unsupported model descriptor 'd4:c16'"),
        (["-o", bad / "file" / "out", "-n", 5], "cannot write to the output dir"),
        (["-y", 1], "need an output dir -o"),
        (["--overwrite"], "need an output dir -o"),
        (["-h", 1, "-o", tmp_path / "h"], None),  # not an error: llm.c's note that the eval file is missing
    ]
    for extra, fragment in cases:
        result = train(*args(data, None, "-x", 3, *map(str, extra)))
        if fragment is None:
            assert result.exit_code == 0 and "HellaSwag eval not found" in result.stdout
        else:
            assert_one_line_error(result, fragment)


def test_llama3_token_shards_are_not_mixed_with_gpt2_ones(data, tmp_path):
    """llama-3 shards (uint32) hold other tokens than gpt-2 ones and HellaSwag's eval file (GPT-2 tokens only,
    as llm.c writes it): mixing them is refused in one line; mid-run samples, which decode GPT-2's tokens,
    are skipped with a note."""
    rng = np.random.default_rng(5)
    write_shard(tmp_path / "llama_train.bin", rng.integers(0, CFG.vocab_size, 700), "llama-3")
    write_shard(tmp_path / "llama_val.bin", rng.integers(0, CFG.vocab_size, 600), "llama-3")
    llama = ["-i", str(tmp_path / "llama_train.bin"), "-j", str(tmp_path / "llama_val.bin")]
    assert_one_line_error(train(*args(data, None, "-x", 2, "-i", str(tmp_path / "llama_train.bin"))),
                          "-i holds llama-3 token shards and -j gpt-2 ones")
    assert_one_line_error(train(*args(data, None, "-x", 2, *llama, "-h", "1")), "-h 1: HellaSwag's eval file holds GPT-2")
    result = train(*args(data, None, "-x", 2, *llama, "-s", "1"))
    assert result.exit_code == 0, result.output
    assert "no samples: -i holds llama-3 token shards; give --tokenizer" in result.stdout
    assert "generating:" not in result.stdout


def test_failed_start_leaves_output_untouched(data, tmp_path):
    out = tmp_path / "out"
    assert train(*args(data, out, "-x", 4, "-n", 2)).exit_code == 0
    before = digest(out, records=True)
    # resuming into bad data, a fresh start over the checkpoints, a corrupt newest state file
    assert_one_line_error(train(*args(data, out, "-x", 8, "-n", 2, "-y", 1, "-j", data / "none*.bin")), "no files")
    assert_one_line_error(train(*args(data, out, "-x", 8, "-n", 2)), "already holds a run (checkpoints up to step 4)")
    assert digest(out, records=True) == before
    state = checkpoint.state_path(out, 4)
    state.write_bytes(state.read_bytes()[:-100])
    assert_one_line_error(train(*args(data, out, "-x", 8, "-n", 2, "-y", 1)), "state_00000004_00000.bin")


def test_non_finite_loss(data, tmp_path):
    out = tmp_path / "out"
    result = train(*args(data, out, "-x", 5, "-l", 1e30))
    assert_one_line_error(result, "loss nan", "checkpoint of step 1")
    assert checkpoint.find_latest(out) == 1


def test_z_score_skipping(data, tmp_path):
    result = train(*args(data, None, "-x", 140, "-v", 1000, "-sl", 0.5, "-sg", 0.5))
    assert result.exit_code == 0
    skips = [ln for ln in result.stdout.splitlines() if ln.startswith("skipping update due to")]
    assert 0 < len(skips) <= 140 - 128  # z-scores exist once the 128-step windows are full
    steps = [ln for ln in result.stdout.splitlines() if ln.startswith("step ")]
    assert "(+nanz)" in steps[127] and "(+nanz)" not in steps[128]


def test_hellaswag_that_does_not_fit(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data/hellaswag").mkdir(parents=True)
    write_eval_shard("data/hellaswag/hellaswag_val.bin", [EvalExample(0, 1, [1] * 14, [[2], [3], [4, 5], [6]])])
    assert_one_line_error(train(*args(data, None, "-x", 2, "-h", 1)), "example 0 needs 17 positions, more than -t 16")


# ----------------------------------------------------------------------------- killed runs

def child(argv: list[str], **env) -> subprocess.Popen:
    env = {**os.environ, **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train-cpu", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def assert_checkpoints_load(out: Path) -> None:
    """Every checkpoint with a DONE file is whole: the model and state files read and fit together."""
    for step in checkpoint.done_steps(out):
        cfg, params = read_model(checkpoint.model_path(out, step))
        assert cfg == CFG
        state = checkpoint.read_state(checkpoint.state_path(out, step), num_parameters(CFG))
        assert state.step == step


def test_kill_9_never_corrupts_the_latest_checkpoint(data, tmp_path):
    steps = 60
    run = args(data, None, "-x", steps, "-n", 1, "-nk", 3, "-v", 20)
    ref = tmp_path / "ref"
    assert train(*run, "-o", str(ref)).exit_code == 0
    out = tmp_path / "out"
    # the first attempts die at chosen renames, between a checkpoint's model, state and DONE files (the
    # next checkpoint's, after one is complete); the others at a random moment once training is under way
    rng = random.Random(0)
    kills = [("rename", k) for k in (2, 3, 4)] + [("time", rng.uniform(0, 0.25)) for _ in range(5)]
    interrupted_writes = 0
    for how, when in kills:
        temporaries = set(out.glob(".*.tmp"))
        p = child([*run, "-o", str(out), "-y", "1"], KILL_AT_REPLACE=when if how == "rename" else 0)
        if how == "time":
            for line in p.stdout:
                if line.startswith("step "):
                    break
            time.sleep(when)
            p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL
        interrupted_writes += bool(set(out.glob(".*.tmp")) - temporaries)
        assert_checkpoints_load(out)
    p = child([*run, "-o", str(out), "-y", "1"])
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    assert not list(out.glob(".*.tmp"))  # the resumed run swept what killed writers left
    # the killed-and-resumed run ends exactly where the uninterrupted one did
    assert checkpoint.done_steps(out) == checkpoint.done_steps(ref) == [58, 59, 60]
    assert digest(out) == digest(ref)
    assert metrics_without_timings(out) == metrics_without_timings(ref)
    assert interrupted_writes >= 3  # the rename kills, and maybe random ones, landed inside a write


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_at_step_boundary(data, tmp_path, sig):
    out = tmp_path / "out"
    p = child(args(data, out, "-x", 100000, "-v", 100000))
    for line in p.stdout:  # wait until training is under way
        if line.startswith("step    3/"):
            break
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, stderr  # as if the signal had ended it, but after a checkpoint
    assert "Traceback" not in stderr
    step = checkpoint.find_latest(out)
    assert step is not None and step >= 3
    assert f"stopped by {sig.name} at step {step}; continue with -y 1 -o {out}" in stdout
    assert_checkpoints_load(out)
    result = train(*args(data, out, "-x", step + 2, "-y", 1))
    assert result.exit_code == 0 and f"resuming from the checkpoint of step {step}" in result.stdout

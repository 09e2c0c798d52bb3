"""A training run's -o folder: one run at a time, never clobbered, recorded in config.json and
metrics.csv, repeatable with --config; the closing summary; optional TensorBoard and W&B logs."""

import json
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core import checkpoint
from llmc.core.formats import write_model
from llmc.core.init import random_init
from llmc.tests.cli.test_train_safety import args, assert_one_line_error, digest, metrics_without_timings, train
from llmc.tests.core.training_data import CFG, write_training_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_training_data(tmp_path_factory.mktemp("data"))


def spawn(argv: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmc", "train-cpu", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


# ----------------------------------------------------------------------------- one run at a time

def test_a_second_run_on_the_same_folder_is_refused_and_writes_nothing(data, tmp_path):
    run = args(data, None, "-x", 40, "-n", 10, "-v", 20)
    solo = tmp_path / "solo"
    assert train(*run, "-o", str(solo)).exit_code == 0
    out = tmp_path / "out"
    first = spawn([*run, "-o", str(out)])
    for line in first.stdout:  # the first run holds the folder and is training...
        if line.startswith("step "):
            break
    first.send_signal(signal.SIGSTOP)  # ...and stays in the middle of its run while the second starts
    second = spawn([*run, "-o", str(out)])
    _, err = second.communicate(timeout=60)
    first.send_signal(signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"-o {out} is in use by process {first.pid} on " in lines[0], err
    assert "train-cpu" in lines[0]  # the holder's command line, from the lock file
    # the winner's checkpoints and main.log are a solo run's, byte for byte
    assert digest(out) == digest(solo)
    assert metrics_without_timings(out) == metrics_without_timings(solo)


def test_a_new_run_never_clobbers_an_earlier_one(data, tmp_path):
    out = tmp_path / "out"
    assert train(*args(data, out, "-x", 6, "-n", 3)).exit_code == 0
    before = digest(out, records=True)
    # no checkpoints (only main.log and the records) count as a run too
    logged = tmp_path / "logged"
    assert train(*args(data, logged, "-x", 3)).exit_code == 0
    for folder, held in ((out, "checkpoints up to step 6"), (logged, "main.log, metrics.csv, config.json")):
        result = train(*args(data, folder, "-x", 4))
        assert_one_line_error(result, f"-o {folder} already holds a run ({held}): resume it with -y 1, "
                                      f"start afresh with --overwrite, or choose another -o")
    assert digest(out, records=True) == before
    # --overwrite starts afresh: the earlier run's checkpoints go, so a later -y 1 cannot pick one up
    result = train(*args(data, out, "-x", 4, "-n", 2, "--overwrite"))
    assert result.exit_code == 0 and f"deleted the earlier run's files in {out}" in result.output
    assert checkpoint.done_steps(out) == [2, 4]
    assert not checkpoint.model_path(out, 6).exists() and not checkpoint.state_path(out, 3).exists()
    assert len((out / "main.log").read_text().splitlines()) == 4 + 2  # 4 steps, val losses at 0 and 4


def test_resume_refuses_another_batch_or_data_and_warns_about_another_model(data, tmp_path):
    out = tmp_path / "out"
    assert train(*args(data, out, "-x", 4, "-n", 2)).exit_code == 0
    before = digest(out, records=True)
    for extra, said in ((["-b", 2], "--batch-size 2 (was 4)"), (["-t", 8], "--seq-len 8 (was 16)"),
                        (["-i", data / "train_1.bin"], "--train-data")):
        result = train(*args(data, out, "-x", 8, "-n", 2, "-y", 1, *extra))
        assert_one_line_error(result, "-y 1 resumes the run in", said, "than it was written with")
    assert digest(out, records=True) == before
    other = tmp_path / "other.bin"
    write_model(other, CFG, random_init(CFG, seed=7))
    result = train(*args(data, out, "-x", 8, "-n", 2, "-y", 1, "-e", other))
    assert result.exit_code == 0, result.output
    assert f"warning: resuming with another --model '{other}'" in result.output
    assert "resuming with changed flags: --max-steps 8 (was 4)" in result.output
    assert checkpoint.done_steps(out)[-1] == 8


# ----------------------------------------------------------------------------- the run's record

def test_config_json_repeats_a_run_byte_for_byte(data, tmp_path):
    out = tmp_path / "out"
    result = train(*args(data, out, "-x", 7, "-n", 5, "-u", 2, "-q", 0.1, "-c", 0.1))
    assert result.exit_code == 0
    config = json.loads((out / "config.json").read_text())
    flags = config["flags"]
    assert flags["learning_rate"] == 1e-3 and flags["max_steps"] == 7 and flags["batch_size"] == 4
    assert flags["output_dir"] == str(out) and flags["lr_schedule"] == "cosine" and flags["resume"] == 0
    assert "recompute" not in flags  # train-cpu's record holds the flags train-cpu takes
    assert config["command"] == "train-cpu" and config["backend"] == "cpu" and config["device"]
    assert config["model"]["num_layers"] == CFG.num_layers and config["model"]["num_parameters"] > 0
    assert config["llmc_version"] and "git_commit" in config and config["argv"][0] == "llmc"
    # the same run again from its record, into another folder
    again = tmp_path / "again"
    result = CliRunner().invoke(main, ["train-cpu", "--config", str(out / "config.json"), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert (again / "main.log").read_bytes() == (out / "main.log").read_bytes()
    assert digest(again) == digest(out)
    # the command line overrides the record
    longer = tmp_path / "longer"
    result = CliRunner().invoke(main, ["train-cpu", "--config", str(out / "config.json"), "-o", str(longer),
                                       "--max-steps", "9"])
    assert result.exit_code == 0 and json.loads((longer / "config.json").read_text())["flags"]["max_steps"] == 9
    assert (longer / "main.log").read_text().startswith((out / "main.log").read_text().split("s:7 ")[0][:40])


def test_config_from_a_gpu_run_names_the_flags_train_cpu_does_not_take(data, tmp_path):
    record = {"flags": {**{k: str(v) for k, v in zip(("model", "train_data", "val_data"),
                                                        (data / "model.bin", data / "train_*.bin", data / "val.bin"))},
                        "batch_size": 4, "seq_len": 16, "max_steps": 2, "recompute": 1, "zero_stage": 0,
                        "sample_every": 0, "output_dir": None}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["train-cpu", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"--config {path}: train-cpu does not take recompute, zero_stage; ignored" in result.stderr
    for bad, said in (("{", "not a run's config.json"), ('{"flags": 3}', "not a run's config.json")):
        path.write_text(bad)
        assert_one_line_error(CliRunner().invoke(main, ["train-cpu", "--config", str(path)]), said)
    assert_one_line_error(CliRunner().invoke(main, ["train-cpu", "--config", str(tmp_path / "no.json")]),
                          "no.json: No such file")


def test_long_flag_names_and_the_optimizer_in_help():
    result = CliRunner().invoke(main, ["train-cpu", "--help"])
    shown = " ".join(result.output.split())
    for text in ("--learning-rate", "--batch-size", "--seq-len", "--max-steps", "--val-every", "--output-dir",
                 "--config", "--overwrite", "--tensorboard", "--wandb-project", "d4:c128:h4:t128",
                 "train_gpt2.cu's", "0.9/0.95", "global norm 1.0", "0 = no validation"):
        assert text in shown, text
    gpu = " ".join(CliRunner().invoke(main, ["train-gpu", "--help"]).output.split())
    assert "--recompute" in gpu and "--zero-stage" in gpu and "changes nothing" in gpu  # -f / --tf32


def test_metrics_csv_and_the_closing_summary(data, tmp_path):
    out = tmp_path / "out"
    result = train(*args(data, out, "-x", 6, "-v", 3, "-n", 6))
    assert result.exit_code == 0
    rows = [ln.split(",") for ln in (out / "metrics.csv").read_text().splitlines()]
    assert rows[0] == ["step", "train_loss", "val_loss", "hellaswag", "lr", "norm", "ms", "tok_per_s", "mfu"]
    train_rows = [r for r in rows[1:] if r[1]]
    val_rows = [r for r in rows[1:] if r[2]]
    assert [int(r[0]) for r in train_rows] == list(range(6)) and [int(r[0]) for r in val_rows] == [0, 3, 6]
    log = (out / "main.log").read_text().splitlines()
    for r in train_rows:  # the same numbers as llm.c's main.log
        assert f"s:{r[0]} trl:{float(r[1]):.4f} lr:{float(r[4]):.6f} norm:{float(r[5]):.2f}" in log
        assert float(r[6]) > 0 and float(r[7]) > 0 and r[8] == ""  # no MFU on the CPU
    summary = " ".join(result.output[result.output.index("| wall time"):].split())
    for text in ("| steps run | 6 |", "| tokens processed | 384 |", "mean tok/s (steady)",
                 "peak host RSS", "GiB", "final val loss", "(step 6)", "best val loss",
                 f"| last checkpoint | {checkpoint.model_path(out, 6)} |"):
        assert text in summary, text


def test_validation_off(data, tmp_path):
    out = tmp_path / "out"
    result = train(*args(data, out, "-x", 4, "-v", 0))
    assert result.exit_code == 0
    assert "val loss" not in result.output and "tel:" not in (out / "main.log").read_text()


# ----------------------------------------------------------------------------- divergence and full disks

def test_diverged_parameters_are_never_the_last_good_state(data, tmp_path):
    out = tmp_path / "out"
    # lr 1e39 is inf in fp32: step 0 is fine, its update makes the parameters infinite
    result = train(*args(data, out, "-x", 5, "-l", 1e39))
    assert_one_line_error(result, "at step 2: stopped before the update",
                          "the parameters were already not finite, so no checkpoint was written",
                          "there is no good checkpoint")
    assert checkpoint.done_steps(out) == []
    result = train(*args(data, tmp_path / "periodic", "-x", 5, "-n", 1, "-l", 1e39))
    assert_one_line_error(result, "the parameters are not finite at step 1: no checkpoint written")
    assert checkpoint.done_steps(tmp_path / "periodic") == []


def test_a_full_disk_names_the_file_and_step(data, tmp_path):
    out = tmp_path / "out"
    limit = (data / "model.bin").stat().st_size // 2  # main.log and the records fit, a model file does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = spawn(args(data, out, "-x", 4, "-n", 2), preexec_fn=small_files)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    lines = err.strip().splitlines()
    assert lines == [f"Error: cannot write {checkpoint.model_path(out, 2)}, the checkpoint of step 2: File too large"]
    assert checkpoint.done_steps(out) == [] and not list(out.glob(".*.tmp"))
    assert (out / "main.log").read_text().count("trl:") == 2


# ----------------------------------------------------------------------------- optional loggers

def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars of TensorBoard event files, read from the TFRecord framing with tensorboardX's protos."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        raw, pos = path.read_bytes(), 0
        while pos < len(raw):
            (n,) = struct.unpack("<Q", raw[pos: pos + 8])
            event = Event.FromString(raw[pos + 12: pos + 12 + n])
            pos += 12 + n + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_events(data, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "out"
    assert train(*args(data, out, "-x", 4, "-v", 2, "--tensorboard")).exit_code == 0
    scalars = tensorboard_scalars(out / "tensorboard")
    assert sorted(scalars["train_loss"]) == [0, 1, 2, 3] and sorted(scalars["val_loss"]) == [0, 2, 4]
    log = (out / "main.log").read_text()
    assert all(f"s:{s} trl:{v:.4f}" in log for s, v in scalars["train_loss"].items())
    assert_one_line_error(train(*args(data, None, "-x", 2, "--tensorboard")), "--tensorboard writes its event files")


def test_wandb_offline(data, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    assert train(*args(data, out, "-x", 4, "-n", 2, "--wandb-project", "llmc-test")).exit_code == 0
    run_id = json.loads((out / "config.json").read_text())["wandb_run_id"]
    wandb.teardown()  # W&B's service writes the run file in the background: wait for it
    files = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1 and b"train_loss" in files[0].read_bytes() and b"val_loss" in files[0].read_bytes()
    # a resumed run logs to the same W&B run
    assert train(*args(data, out, "-x", 6, "-n", 2, "-y", 1, "--wandb-project", "llmc-test")).exit_code == 0
    assert json.loads((out / "config.json").read_text())["wandb_run_id"] == run_id
    wandb.teardown()
    # each run's file is named by its run id (its folder gets a "-1" more when the resume starts within the
    # same second as the first run)
    assert {p.name[len("run-"):-len(".wandb")] for p in (out / "wandb").glob("offline-run-*/run-*.wandb")} == {run_id}

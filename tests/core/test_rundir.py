"""core/rundir.py: the output folder's lock, what counts as a run, the resume comparison."""

import pytest

from llmc.core.errors import LlmcError
from llmc.core.rundir import RunDir, holds_run


def test_one_holder_at_a_time_and_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "out"
    first = RunDir(str(out), rank=0)
    first.take({"flags": {}}, print)
    with pytest.raises(LlmcError, match=r"is in use by process \d+ on .*started"):
        RunDir(str(out), rank=0)
    first.release()
    second = RunDir(str(out), rank=0)  # free again once released
    second.release(failed=True)  # the folder existed before this one: it stays
    assert out.is_dir()
    fresh = tmp_path / "fresh"
    RunDir(str(fresh), rank=0).release(failed=True)
    assert not fresh.exists()  # a failed start removes the folder it made
    assert not (tmp_path / "r1").exists() and RunDir(str(tmp_path / "r1"), rank=1)._lock_fd is None


def test_what_holds_a_run(tmp_path):
    assert not holds_run(tmp_path)
    (tmp_path / ".llmc.lock").write_text("")
    assert not holds_run(tmp_path)  # a lock alone is no run
    for name in ("main.log", "metrics.csv", "config.json", "model_00000010.bin", "state_00000010_00000.bin",
                 "DONE_00000010"):
        (tmp_path / name).write_text("")
        assert holds_run(tmp_path)
        (tmp_path / name).unlink()


def test_resume_compares_flags_with_the_runs_record(tmp_path):
    run_dir = RunDir(str(tmp_path), rank=0)
    flags = {"batch_size": 4, "seq_len": 64, "model": "a.bin", "max_steps": 10, "output_dir": "x", "resume": 0}
    run_dir.take({"flags": flags}, print)
    said: list[str] = []
    run_dir.check_resume({**flags, "resume": 1, "output_dir": "elsewhere"}, said.append)
    assert said == []  # where and how a run is started are not compared
    run_dir.check_resume({**flags, "max_steps": 20, "model": "b.bin"}, said.append)
    assert said == ["warning: resuming with another --model 'b.bin' (was 'a.bin'); the weights come from the "
                    "checkpoint, not -e", "resuming with changed flags: --max-steps 20 (was 10)"]
    with pytest.raises(LlmcError, match=r"other --seq-len 32 \(was 64\) than it was written with"):
        run_dir.check_resume({**flags, "seq_len": 32}, said.append)
    (tmp_path / "config.json").write_text("written by hand")
    run_dir.check_resume({**flags, "seq_len": 32}, said.append)  # no record to compare with
    run_dir.release()

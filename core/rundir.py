"""The output folder (-o) of a training run: held by one run at a time, never clobbered, and holding
config.json, the record of how its run was started.

- Rank 0 holds an exclusive flock on DIR/.llmc.lock for the whole run (the other ranks write only their
  own state files, and only while their rank 0 runs). A second run on the same folder is refused before
  it reads or writes anything there, with the holder's pid, host and command from the lock file.
- A folder holds a run when it has main.log, metrics.csv, config.json or checkpoint files. A new run
  (no -y 1) there is refused unless --overwrite, which first deletes that run's files (checkpoints
  DONE-first, so a kill midway never leaves a stale complete checkpoint for a later -y 1 to resume).
- -y 1 compares its flags with the config.json of the run it resumes: another batch layout or data
  is refused (the data order and optimizer state would silently stop matching), another -e or -j
  is named in a warning, other changes (a longer -x, say) in a note.
"""

import datetime
import fcntl
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

from llmc.core import checkpoint
from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write

LOCK, LOG, METRICS, CONFIG = ".llmc.lock", "main.log", "metrics.csv", "config.json"
# atomic_write's temporary names for a run's files: `.NAME.XXXXXXXX.tmp`
STALE = re.compile(rf"\.({'|'.join(map(re.escape, (LOG, METRICS, CONFIG)))}|model_\d+\.bin|state_\d+_\d+\.bin|DONE_\d+)"
                   r"\..+\.tmp")
# flags whose change would resume another run than the one in the folder (another data order or state)
RESUME_MUST_MATCH = ("train_data", "batch_size", "seq_len", "total_batch_size", "overfit_single_batch",
                     "num_processes", "zero_stage")
# flags a resumed run does not use (its weights come from the checkpoint) or that change only what it reports
RESUME_WARN = ("model", "val_data")
# flags that say where and how, not what is trained: never compared
RESUME_IGNORE = ("output_dir", "resume", "overwrite", "process_rank", "config")


def holds_run(path: Path) -> bool:
    """Whether a folder has the files of a run (llm.c's or llmc's)."""
    if any((path / name).exists() for name in (LOG, METRICS, CONFIG)):
        return True
    return path.is_dir() and any(p.name.startswith(("model_", "state_", "DONE_")) for p in path.iterdir())


def llmc_version() -> tuple[str, str | None]:
    """(package version, git commit of the checkout llmc runs from, where it is one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("llmc")
    except PackageNotFoundError:
        v = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return v, commit


class RunDir:
    """An output folder held by this run (rank 0 locks it; see the module docstring)."""

    def __init__(self, path: str, rank: int):
        self.path, self.rank = Path(path), rank
        self.created = not self.path.exists()
        self._lock_fd: int | None = None
        if rank != 0:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = self.path / LOCK
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LlmcError(f"cannot write to the output dir -o {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 500).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LlmcError(f"-o {self.path} is in use by {holder}; wait for it to end or choose another -o") from None
        self._lock_fd = fd

    @classmethod
    def hold(cls, path: str, group) -> "RunDir":
        """The folder, locked by rank 0 of the group before anything there is read; every rank stops
        (with rank 0's reason there) if rank 0 cannot take it."""
        try:
            run_dir, refusal = cls(path, group.rank), None
        except LlmcError as e:
            run_dir, refusal = None, e
        try:
            if group.world > 1 and group.host_reduce([float(refusal is not None)], "max")[0]:
                raise refusal or LlmcError(f"rank 0 could not take the output dir -o {path}")
        except BaseException:  # a refusal, or a rank that failed in the collective: give the folder up
            if run_dir is not None:
                run_dir.release(failed=True)
            raise
        if refusal is not None:
            raise refusal
        return run_dir

    def refuse_clobber(self, resume: bool, overwrite: bool) -> None:
        """Refuse a new run (no -y 1) where it would clobber the run in the folder (reads only; rank 0).
        -y 1 with no complete checkpoint to resume from starts afresh, as llm.c does: what a run killed
        before its first checkpoint left cannot be continued, and a job that always passes -y 1 restarts."""
        if self.rank != 0 or resume or overwrite or not holds_run(self.path):
            return
        raise LlmcError(f"-o {self.path} already holds a run ({self._what_is_there()}): resume it with -y 1, "
                        f"start afresh with --overwrite, or choose another -o")

    def _what_is_there(self) -> str:
        done = checkpoint.done_steps(self.path)
        return f"checkpoints up to step {done[-1]}" if done else \
            ", ".join(name for name in (LOG, METRICS, CONFIG) if (self.path / name).exists()) or "checkpoint files"

    def _delete_run(self, out: Callable[[str], None]) -> None:
        what = self._what_is_there()
        for step in checkpoint.done_steps(self.path):
            checkpoint.delete_checkpoint(self.path, step)
        for p in self.path.iterdir():
            if p.name in (LOG, METRICS, CONFIG) or p.name.startswith(("model_", "state_")):
                p.unlink()
        out(f"starting afresh: deleted the earlier run's files in {self.path} ({what})")

    def previous_config(self) -> dict | None:
        """The config.json of the run in the folder, if it has a readable one."""
        try:
            return json.loads((self.path / CONFIG).read_text())
        except (OSError, ValueError):
            return None

    def check_resume(self, flags: dict, out: Callable[[str], None]) -> None:
        """-y 1: refuse flags that would resume another run; warn about or note the other changes."""
        before = (self.previous_config() or {}).get("flags")
        if not isinstance(before, dict):
            return  # written by llm.c or by an older llmc: nothing to compare
        changed = {k: (before[k], v) for k, v in flags.items() if k in before and before[k] != v
                   and k not in RESUME_IGNORE}
        refused = [k for k in changed if k in RESUME_MUST_MATCH]
        if refused:
            raise LlmcError(f"-y 1 resumes the run in {self.path} with other {_describe(refused, changed)} "
                            f"than it was written with: resume with the same flags, or start afresh in another -o")
        warned = [k for k in changed if k in RESUME_WARN]
        if warned:
            out(f"warning: resuming with another {_describe(warned, changed)}; the weights come from the "
                f"checkpoint, not -e")
        noted = [k for k in changed if k not in RESUME_WARN]
        if noted:
            out(f"resuming with changed flags: {_describe(noted, changed)}")

    def take(self, record: dict, out: Callable[[str], None]) -> None:
        """Start this run's files (rank 0), once every check has passed: delete the earlier run when this
        one starts afresh (--overwrite, or -y 1 with nothing to resume), name this process in the lock
        file, write config.json: every flag's resolved value (record["flags"]), the model, llmc's version
        and commit, the backend, the device, the command line."""
        if self.rank != 0:
            return
        if record.get("resumed_from_step") is None and holds_run(self.path):
            self._delete_run(out)
        for p in self.path.glob(".*.tmp"):  # what a killed writer left (atomic_write's names: never final ones)
            if STALE.fullmatch(p.name):
                p.unlink(missing_ok=True)
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"process {os.getpid()} on {socket.gethostname()} ({' '.join(_argv())}, "
                                 f"started {_now()})\n".encode(), 0)
        version, commit = llmc_version()
        record = {"llmc_version": version, "git_commit": commit, "argv": _argv(), "started": _now(),
                  "host": socket.gethostname(), "python": platform.python_version(), **record}
        with atomic_write(self.path / CONFIG) as f:
            f.write((json.dumps(record, indent=2) + "\n").encode())

    def release(self, failed: bool = False) -> None:
        """Give the folder up; after a failed start, remove the folder again if this run created it."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None
        if failed and self.created:
            (self.path / LOCK).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass


def _describe(keys: list[str], changed: dict) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {changed[k][1]!r} (was {changed[k][0]!r})" for k in keys)


def _argv() -> list[str]:
    return ["llmc", *sys.argv[1:]] if Path(sys.argv[0]).name in ("llmc", "__main__.py") else list(sys.argv)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")

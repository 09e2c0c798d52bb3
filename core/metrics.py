"""What a run records as it goes (rank 0): llm.c's main.log, metrics.csv beside it, and the optional
TensorBoard and Weights & Biases loggers, each through its own library.

main.log keeps llm.c's lines (`s:%d trl:%.4f lr:%.6f norm:%.2f`, `s:%d tel:%.4f`, `s:%d eval:%.4f`),
so llm.c's plotting notebook and `llmc plot` read it. metrics.csv has a row per step (train loss, lr,
norm, the step's time, tok/s and MFU) and a row per evaluation (val loss, HellaSwag), with main.log's
step numbers. A fresh run starts both empty; a resumed one cuts both back to its checkpoint's step,
since it redoes what the interrupted run logged after it.
"""

import csv
import io
import math
import re
from pathlib import Path

from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write

COLUMNS = ("step", "train_loss", "val_loss", "hellaswag", "lr", "norm", "ms", "tok_per_s", "mfu")


class RunLog:
    def __init__(self, out_dir: str | None, resume_step: int | None = None, tensorboard: bool = False,
                 wandb_project: str | None = None, wandb_id: str | None = None, config: dict | None = None):
        """Open main.log and metrics.csv in out_dir (nothing on disk without one) and the loggers asked for."""
        self.log_path = self.csv_path = None
        self.tensorboard = self.wandb = None
        if out_dir is not None:
            self.log_path, self.csv_path = Path(out_dir) / "main.log", Path(out_dir) / "metrics.csv"
            try:
                _cut_back(self.log_path, resume_step, lambda line: (m := re.match(r"s:(\d+) ", line)) and int(m[1]))
                _cut_back(self.csv_path, resume_step, _csv_step, header=",".join(COLUMNS) + "\n")
            except OSError as e:
                raise LlmcError(f"cannot write to the output dir -o {out_dir}: {e.strerror}") from None
        if tensorboard:
            self.tensorboard = _tensorboard_writer(out_dir)
        if wandb_project:
            self.wandb = _wandb_run(wandb_project, wandb_id, out_dir, config or {})

    def train_step(self, step: int, loss: float, lr: float, norm: float, seconds: float, tokens_per_second: float,
                   mfu: float | None) -> None:
        self._line(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")
        self._row(step=step, train_loss=loss, lr=lr, norm=norm, ms=seconds * 1000, tok_per_s=tokens_per_second,
                  mfu=mfu)

    def val_loss(self, step: int, loss: float) -> None:
        self._line(f"s:{step} tel:{loss:.4f}")
        self._row(step=step, val_loss=loss)

    def hellaswag(self, step: int, accuracy: float) -> None:
        self._line(f"s:{step} eval:{accuracy:.4f}")
        self._row(step=step, hellaswag=accuracy)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()

    def _line(self, line: str) -> None:
        if self.log_path is not None:
            _append(self.log_path, line + "\n")

    def _row(self, step: int, **values: float | None) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if self.csv_path is not None:
            _append(self.csv_path, ",".join(_cell(values.get(c, step if c == "step" else None)) for c in COLUMNS) + "\n")
        if self.tensorboard is not None:
            for k, v in values.items():
                self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)


def _cell(v: float | None) -> str:
    if v is None:
        return ""
    return str(v) if isinstance(v, int) or not math.isfinite(v) else f"{v:.6g}"


def _csv_step(line: str) -> int | None:
    row = next(csv.reader(io.StringIO(line)), [])
    return int(row[0]) if row and row[0].isdigit() else None


def _cut_back(path: Path, resume_step: int | None, step_of, header: str = "") -> None:
    """A fresh run starts the file anew; a resumed one keeps what was logged before its step."""
    if resume_step is None or not path.exists():
        kept = header
    else:
        lines = path.read_text().splitlines(keepends=True)
        kept = "".join(ln for ln in lines if (s := step_of(ln)) is None or s < resume_step) or header
    with atomic_write(path) as f:
        f.write(kept.encode())


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        raise LlmcError(f"cannot append to {path}: {e.strerror}") from None


def _tensorboard_writer(out_dir: str | None):
    if out_dir is None:
        raise LlmcError("--tensorboard writes its event files under -o: give an output dir")
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise LlmcError("--tensorboard needs tensorboardX: pip install 'llmc[tensorboard]'") from None
    return SummaryWriter(logdir=str(Path(out_dir) / "tensorboard"))


def _wandb_run(project: str, run_id: str | None, out_dir: str | None, config: dict):
    try:
        import wandb
    except ImportError:
        raise LlmcError("--wandb-project needs wandb: pip install 'llmc[wandb]'") from None
    name = Path(out_dir).name if out_dir else None
    return wandb.init(project=project, name=name, id=run_id, resume="allow" if run_id else None, config=config,
                      dir=out_dir)

"""What a training run prints besides its step lines: llm.c's start-up tables, the step timer behind
the tok/s and MFU columns, and the closing summary."""

import resource
import time
from typing import Callable

Out = Callable[[str], None]


def print_table(rows: list[tuple[str, object]], out: Out) -> None:
    line = "+-----------------------+----------------------------------------------------+"
    out(line)
    for k, v in rows:
        out(f"| {k:<21} | {str(v):<50} |")
    out(line)


def duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class StepTimer:
    """Step times from one read-back to the next; llm.c's tok/s (a bias-corrected EMA after the first
    step, which is warmup) and bf16 MFU column."""

    def __init__(self, tokens_per_step: int, flops_per_step: float, promised_flops: float | None):
        self.tokens, self.flops, self.promised = tokens_per_step, flops_per_step, promised_flops
        self.since: float | None = None  # when the step being timed began
        self.total, self.steps_run, self.ema_tps = 0.0, 0, 0.0

    def lap(self) -> tuple[float, float, float | None]:
        """(dt, tok/s, MFU) of the step that ends now; MFU is None without a promised FLOP/s (the CPU)
        and -1 on an unknown GPU, as llm.c prints it."""
        now = time.perf_counter()
        dt, self.since = now - self.since, now
        tps = self.tokens / dt
        if self.steps_run > 0:  # this process's first step is warmup (llm.c: step 0)
            self.total += dt
            self.ema_tps = 0.95 * self.ema_tps + 0.05 * tps
            tps = self.ema_tps / (1.0 - 0.95 ** self.steps_run)
        self.steps_run += 1
        return dt, tps, self.mfu(dt)

    def mfu(self, dt: float | None) -> float | None:
        """llm.c's bf16 MFU of a step of dt seconds."""
        if self.promised is None or dt is None:
            return None
        return self.flops / dt / self.promised if self.promised > 0 else -1.0

    def mean(self) -> float | None:
        """The mean step time after the warmup step, None before there is one."""
        return self.total / (self.steps_run - 1) if self.steps_run > 1 else None

    def eta(self, steps_left: int, dt: float) -> float:
        mean = self.mean()
        return (dt if mean is None else mean) * steps_left


def mib_of_total(usage: tuple[int, int]) -> str:
    """llm.c's "X MiB / Y MiB" of (in use, total) bytes."""
    return f"{usage[0] >> 20} MiB / {usage[1] >> 20} MiB"


def summary(wall_seconds: float, timer: StepTimer, memory_usage: tuple[int, int] | None, val_losses: list[tuple[int, float]],
            last_checkpoint: str | None, out: Out) -> None:
    """The closing table: time, tokens, throughput and MFU over the steady steps (after the first),
    peak memory, val losses, the last checkpoint."""
    steady = timer.mean()
    rows = [("wall time", duration(wall_seconds)), ("steps run", timer.steps_run),
            ("tokens processed", f"{timer.steps_run * timer.tokens:,}")]
    if steady is not None:
        rows.append(("mean tok/s (steady)", f"{timer.tokens / steady:,.0f}"))
        if timer.mfu(steady) is not None:
            rows.append(("mean MFU (steady)", f"{100 * timer.mfu(steady):.1f}%"))
    rows.append(("peak host RSS", gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
    if memory_usage is not None:
        rows.append(("device memory usage", mib_of_total(memory_usage)))
    if val_losses:
        best = min(val_losses, key=lambda sv: sv[1])
        rows += [("final val loss", f"{val_losses[-1][1]:.4f} (step {val_losses[-1][0]})"),
                 ("best val loss", f"{best[1]:.4f} (step {best[0]})")]
    if last_checkpoint is not None:
        rows.append(("last checkpoint", last_checkpoint))
    print_table(rows, out)

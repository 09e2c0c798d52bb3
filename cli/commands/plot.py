"""`llmc plot`: train/val loss and HellaSwag curves from main.log files (llm.c's dev/vislog.ipynb)."""

import re
from pathlib import Path

import click

from llmc.core.errors import LlmcError

LINE = re.compile(r"s:(\d+) (trl|tel|eval):(\S+)")


def read_log(path: Path) -> dict[str, dict[int, float]]:
    """{'trl': {step: value}, 'tel': ..., 'eval': ...}; a step logged twice (a resumed run) keeps the last."""
    streams: dict[str, dict[int, float]] = {"trl": {}, "tel": {}, "eval": {}}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            try:
                streams[m.group(2)][int(m.group(1))] = float(m.group(3))
            except ValueError:
                raise LlmcError(f"{path}: unreadable line {line!r}") from None
    return streams


def log_path(run: str) -> Path:
    p = Path(run)
    path = p / "main.log" if p.is_dir() else p
    if not path.is_file():
        raise LlmcError(f"{run}: no main.log there (give a run's -o dir or a main.log file)")
    return path


@click.command("plot")
@click.argument("runs", nargs=-1, required=True)
@click.option("-o", "--output", default="llmc_plot.png", show_default=True, help="the PNG to write")
def command(runs: tuple[str, ...], output: str) -> None:
    """Plot train/val loss and HellaSwag accuracy of one or more runs (their -o dirs or main.log files).

    Example: llmc plot log124M log350M -o curves.png
    """
    try:
        import matplotlib
    except ImportError:
        raise LlmcError("llmc plot needs matplotlib: pip install 'llmc[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    logs = {run: read_log(log_path(run)) for run in runs}
    if not any(s for streams in logs.values() for s in streams.values()):
        raise LlmcError("no s:N trl:/tel:/eval: lines in " + ", ".join(runs))
    with_eval = any(streams["eval"] for streams in logs.values())
    fig, axes = plt.subplots(1, 2 if with_eval else 1, figsize=(16 if with_eval else 8, 6), squeeze=False)
    loss_ax = axes[0][0]
    for i, (run, streams) in enumerate(logs.items()):
        color = f"C{i}"  # one color per run: train solid, val dashed
        for key, style, what in (("trl", "-", "train"), ("tel", "o--", "val")):
            if streams[key]:
                steps = sorted(streams[key])
                loss_ax.plot(steps, [streams[key][s] for s in steps], style, color=color, markersize=3,
                             label=f"{run} {what}")
        if with_eval and streams["eval"]:
            steps = sorted(streams["eval"])
            axes[0][1].plot(steps, [streams["eval"][s] for s in steps], "o-", color=color, markersize=3, label=run)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend()
    if with_eval:
        axes[0][1].set(xlabel="step", ylabel="accuracy", title="HellaSwag")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100, format="png")
    plt.close(fig)
    click.echo(f"wrote {output}")

"""FP8's training quality against bf16 (make bench-gpu-fp8-quality): the same train-gpu run three times on
the Shakespeare shards, bf16 (-f8 0), -f8 1, and -f8 1 -w 0 (no master weights), then every 50th step's train
loss, the mean train loss of the 50 steps up to it (one batch's loss is noisy from run to run; their mean much
less) and every evaluation's val loss side by side, with the largest differences from bf16.

Default: d12, T=1024, B=16, 600 steps with the shape of llm.c's GPT-2 124M schedule (lr 6e-4, warm-up 700 of
18865 steps scaled to 22 of 600, cosine to 0, weight decay 0.1), val loss every 50 steps over 20 batches.
Example: python -m tests.bench.fp8_quality --steps 600
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TRAIN_LOSS = re.compile(r"^s:(\d+) trl:(\S+)")
VAL_LOSS = re.compile(r"^s:(\d+) tel:(\S+)")
RUNS = (("-f8 0", ()), ("-f8 1", ("-f8", "1")), ("-f8 1 -w 0", ("-f8", "1", "-w", "0")))


def losses(main_log: Path, pattern: re.Pattern) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in map(pattern.match, main_log.read_text().splitlines()) if m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-e", default="d12")
    ap.add_argument("-b", type=int, default=16)
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=50, help="train losses compared at these steps; val loss as often")
    ap.add_argument("--trainer", choices=["train-gpu", "train-cpu"], default="train-gpu",
                    help="train-cpu: the CPU's FP8 emulation (no -w 0 run: master weights are the CPU's own)")
    args = ap.parse_args()
    runs = RUNS if args.trainer == "train-gpu" else RUNS[:2]
    warmup = max(1, round(700 / 18865 * args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(["llmc", "prepro", "tinyshakespeare", "--builtin", "-o", str(data)], check=True,
                       capture_output=True)
        logs = {}
        for name, flags in runs:
            out = Path(tmp) / name.replace(" ", "").replace("-", "_")
            cmd = ["llmc", args.trainer, "-e", args.e, "-i", str(data / "tiny_shakespeare_train.bin"),
                   "-j", str(data / "tiny_shakespeare_val.bin"), "-b", str(args.b), "-t", str(args.t),
                   "-x", str(args.steps), "-u", str(warmup), "-q", "0", "-c", "0.1", "-l", "6e-4",
                   "-v", str(args.every), "-m", "20", "-s", "0", "-o", str(out), *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            logs[name] = (losses(out / "main.log", TRAIN_LOSS), losses(out / "main.log", VAL_LOSS))
    names = [name for name, _ in runs]
    # a step's train loss is one batch's, noisy from run to run; the mean of the `every` steps up to it is not
    windows = {n: {step: float(np.mean([logs[n][0][s] for s in range(step - args.every + 1, step + 1)]))
                   for step in logs[n][0] if step >= args.every and step % args.every == 0
                   and all(s in logs[n][0] for s in range(step - args.every + 1, step + 1))} for n in names}
    columns = {"train": {n: logs[n][0] for n in names}, f"train mean of {args.every}": windows,
               "val": {n: logs[n][1] for n in names}}
    print(f"{args.e}, B={args.b}, T={args.t}, {args.steps} steps")
    print("| step | " + " | ".join(f"{kind} {n}" for kind in columns for n in names) + " |")
    print("|---" * (1 + len(columns) * len(names)) + "|")
    worst = {(kind, n): 0.0 for kind in columns for n in names[1:]}
    for step in sorted(set(logs["-f8 0"][0]) | set(logs["-f8 0"][1])):
        if step % args.every and step not in logs["-f8 0"][1]:
            continue
        cells = []
        for kind, by_run in columns.items():
            ref = by_run["-f8 0"].get(step)
            for n in names:
                value = by_run[n].get(step)
                cells.append("-" if value is None else f"{value:.4f}")
                if n != "-f8 0" and value is not None and ref is not None:
                    worst[kind, n] = max(worst[kind, n], abs(value - ref))
        print(f"| {step} | " + " | ".join(cells) + " |")
    for n in names[1:]:
        print(f"{n}: largest difference from -f8 0: " + ", ".join(f"{kind} {worst[kind, n]:.4f}" for kind in columns))

if __name__ == "__main__":
    main()

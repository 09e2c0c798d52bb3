"""FP8's training quality against bf16 (make bench-gpu-fp8-quality): the same train-gpu run three times on
the Shakespeare shards, bf16 (-f8 0), -f8 1, and -f8 1 -w 0 (no master weights), then every 50th step's train
loss and every evaluation's val loss side by side, with the largest differences from bf16.

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
    print(f"{args.e}, B={args.b}, T={args.t}, {args.steps} steps")
    print("| step | " + " | ".join(f"train {n}" for n in names) + " | " + " | ".join(f"val {n}" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    base_train, base_val = logs["-f8 0"]
    worst = {n: [0.0, 0.0] for n in names[1:]}
    for step in sorted(set(base_train) | set(base_val)):
        if step % args.every and step not in base_val:
            continue
        cells = []
        for kind, i in (("train", 0), ("val", 1)):
            for n in names:
                value = logs[n][i].get(step)
                cells.append("-" if value is None else f"{value:.4f}")
                ref = (base_train if i == 0 else base_val).get(step)
                if n != "-f8 0" and value is not None and ref is not None and (i == 1 or step % args.every == 0):
                    worst[n][i] = max(worst[n][i], abs(value - ref))
        print(f"| {step} | " + " | ".join(cells) + " |")
    for n, (train, val) in worst.items():
        print(f"{n}: largest difference from -f8 0: train {train:.4f} (every {args.every}th step), val {val:.4f}")


if __name__ == "__main__":
    main()

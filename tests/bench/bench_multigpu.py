"""Multi-GPU benchmark (make bench-multigpu): `llmc train-gpu` on 1, 2, 4 and 8 GPUs of this machine (as many
as it has), -z 0 and -z 1, in one command, with make bench-gpu's steady-state method.

The 1-GPU row is make bench-gpu's own measurement (tests/bench/bench_gpu.py's child, train-gpu's loop in one
process). N > 1 runs the real CLI, one process per GPU started with -pi fs, each rank reading its part of the
same random tokens. Every row: the median of the step times rank 0 prints after --warmup steps (an H100/H200
at its power cap settles over the first ~1.2 s), tok/s over all GPUs, and the scaling efficiency against N
times the 1-GPU tok/s of the same command.

--check-losses also runs 20 steps on N GPUs against 1 GPU accumulating the same total batch (-d N*B*T),
which reads the same tokens in the same order (llm.c's data split): the losses should agree to bf16's noise.

    python -m tests.bench.bench_multigpu -e d12 -b 16
    python -m tests.bench.bench_multigpu -e d48 -b 8 -r 1 --check-losses
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from llmc.tests.bench.bench_gpu import STEP_LOSS, random_shards, step_lines


def train_gpu(data: Path, model: str, B: int, T: int, recompute: int, gpus: int, zero: int, steps: int,
              total_batch: int = -1) -> list[str]:
    """rank 0's printed lines of `llmc train-gpu` on `gpus` processes (one per GPU, rendezvous through -pi fs)."""
    base = [sys.executable, "-m", "llmc", "train-gpu", "-e", model, "-i", str(data / "train.bin"), "-j",
            str(data / "val.bin"), "-b", str(B), "-t", str(T), "-d", str(total_batch), "-x", str(steps),
            "-v", "0", "-s", "0", "-r", str(recompute), "-z", str(zero)]
    with tempfile.TemporaryDirectory() as rendezvous:
        ranks = [["-pn", str(gpus), "-pr", str(r), "-pi", "fs", "-pf", rendezvous] if gpus > 1 else []
                 for r in range(gpus)]
        procs = [subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for extra in ranks]
        outputs = [p.communicate()[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outputs)):
        if p.returncode != 0:
            sys.exit(f"train-gpu failed ({gpus} GPUs, -z {zero}, rank {r}):\n{out[-3000:]}")
    return outputs[0].splitlines()


def one_gpu(model: str, B: int, T: int, recompute: int, warmup: int, steps: int) -> float:
    """make bench-gpu's llmc measurement: median ms per step."""
    cmd = [sys.executable, "-m", "tests.bench.bench_gpu", "--child", "llmc", "-e", model, "-b", str(B), "-t", str(T),
           "-r", str(recompute), "--warmup", str(warmup), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bench_gpu's llmc child failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-e", default="d12", help="GPT-2 model descriptor")
    ap.add_argument("-b", type=int, default=16, help="micro-batch size per GPU")
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("-r", type=int, default=0, choices=[0, 1, 2], help="recompute (train-gpu -r)")
    ap.add_argument("--warmup", type=int, default=50, help="steps not timed")
    ap.add_argument("--steps", type=int, default=50, help="measured steps (the median is printed)")
    ap.add_argument("--gpus", type=int, nargs="+", help="GPU counts (default: 1, 2, 4, 8 up to this machine's)")
    ap.add_argument("--check-losses", action="store_true",
                    help="20 steps on N GPUs against 1 GPU accumulating the same total batch")
    a = ap.parse_args()
    import cupy as cp

    available = cp.cuda.runtime.getDeviceCount()
    counts = a.gpus or [n for n in (1, 2, 4, 8) if n <= available]
    if max(counts) > available:
        sys.exit(f"this machine has {available} GPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        random_shards(tmp, a.e, max(counts) * a.b, a.t, a.warmup + a.steps + 1)
        base_ms = one_gpu(a.e, a.b, a.t, a.r, a.warmup, a.steps)
        base_tps = a.b * a.t / base_ms * 1e3
        rows.append((1, "-", base_ms, base_tps, 1.0))
        for n in (n for n in counts if n > 1):
            for zero in (0, 1):
                lines = train_gpu(data, a.e, a.b, a.t, a.r, n, zero, a.warmup + a.steps)
                ms = float(np.median(step_lines(lines, a.warmup)["times"])) * 1e3
                tps = n * a.b * a.t / ms * 1e3
                rows.append((n, zero, ms, tps, tps / (n * base_tps)))
                print(f"{n} GPUs -z {zero}: {ms:.2f} ms/step, {tps:.0f} tok/s, {100 * rows[-1][4]:.1f}%", flush=True)
        checks = []
        if a.check_losses:
            for n in (n for n in counts if n > 1):
                total = n * a.b * a.t
                one = train_gpu(data, a.e, a.b, a.t, a.r, 1, 0, 20, total_batch=total)
                many = train_gpu(data, a.e, a.b, a.t, a.r, n, 1, 20, total_batch=total)
                losses = [[float(m[1]) for m in map(STEP_LOSS.match, run) if m] for run in (one, many)]
                checks.append((n, max(abs(x - y) for x, y in zip(*losses))))
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\n{a.e}, T={a.t}, B={a.b} per GPU, -r {a.r}, {device}; median of {a.steps} steps after {a.warmup}")
    print("| GPUs | -z | ms/step | tok/s | scaling efficiency |\n|---|---|---|---|---|")
    for n, zero, ms, tps, eff in rows:
        print(f"| {n} | {zero} | {ms:.2f} | {tps:.0f} | {100 * eff:.1f}% |")
    for n, diff in checks:
        print(f"{n} GPUs -z 1 vs 1 GPU accumulating the same total batch, 20 steps: max |loss difference| {diff:.2e}")


if __name__ == "__main__":
    main()

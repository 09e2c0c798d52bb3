"""Multi-GPU benchmark: `llmc train-gpu` on GPT-2 d12, T=1024, B=16 per GPU, no recompute, on 1 GPU,
then 2 GPUs with -z 1 (and -z 0 for reference), in one command on one machine.

Each configuration is the real CLI, one process per GPU started with -pi fs; the data are random
tokens written once to a temporary directory. Reported: the mean step time llm.c's "total average
iteration time" line gives (steps after the first), tok/s over all GPUs, and the speedup over 1 GPU
(ideal: the number of GPUs). The issue's bar: >= 1.9x on 2 GPUs with -z 1.

    python -m tests.bench.bench_multigpu [--steps 40] [--gpus 2]
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from llmc.core.formats import write_shard

B, T, VOCAB = 16, 1024, 50257
AVERAGE = re.compile(r"total average iteration time: ([\d.]+) ms")


def run(data: Path, out: Path, gpus: int, zero: int, steps: int) -> float:
    """Mean ms per step of one configuration (rank 0's report)."""
    base = [sys.executable, "-c", "from llmc.cli.main import main; main()", "train-gpu", "-e", "d12",
            "-i", str(data / "train.bin"), "-j", str(data / "val.bin"), "-b", str(B), "-t", str(T),
            "-x", str(steps), "-v", "100000", "-m", "1", "-s", "0", "-r", "0", "-z", str(zero)]
    multi = lambda r: ["-pn", str(gpus), "-pr", str(r), "-pi", "fs", "-pf", str(out)] if gpus > 1 else []  # noqa: E731
    procs = [subprocess.Popen(base + multi(r), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(gpus)]
    outputs = [p.communicate()[0] for p in procs]
    for p, o in zip(procs, outputs):
        if p.returncode != 0:
            sys.exit(f"train-gpu failed ({gpus} GPUs, -z {zero}):\n{o[-3000:]}")
    match = AVERAGE.search(outputs[0])
    if match is None:
        sys.exit(f"no average iteration time in:\n{outputs[0][-3000:]}")
    return float(match[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--gpus", type=int, default=2)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        rng = np.random.default_rng(0)
        tokens = a.gpus * B * T * (a.steps + 2) + 1
        write_shard(data / "train.bin", rng.integers(0, VOCAB, tokens))
        write_shard(data / "val.bin", rng.integers(0, VOCAB, a.gpus * B * T + 1))
        rows = []
        for gpus, zero in ((1, 0), (a.gpus, 1), (a.gpus, 0)):
            ms = run(data, data, gpus, zero, a.steps)
            rows.append((gpus, zero, ms, gpus * B * T / ms * 1000))
    base = rows[0][3]
    print(f"GPT-2 d12, T={T}, B={B} per GPU, {a.steps} steps")
    print(f"{'GPUs':>4} {'-z':>3} {'ms/step':>9} {'tok/s':>10} {'speedup':>8}")
    for gpus, zero, ms, tps in rows:
        print(f"{gpus:>4} {zero:>3} {ms:>9.2f} {tps:>10.0f} {tps / base:>7.2f}x")


if __name__ == "__main__":
    main()

"""A quick start (make bench-gpu-start): the whole process of a short train-gpu run, from the command to its exit,
warm (the tuning caches on disk), with llm.c's train_gpt2cu on the same command line when --llm-c is given.

Default, as issue 22 measures it: `-e d12 -b 16 -t 1024 -x 2` on the Shakespeare shards with llm.c's defaults
otherwise (val loss at step 0 and at the end, a 64-token sample at the last step), gpt2_tokenizer.bin in the
working directory for both. One untimed run of each side first (llmc times cuBLASLt's candidates there on a
new machine), then --repeats timed runs, the two sides alternating; medians printed.
Example: python -m tests.bench.bench_start --llm-c path/to/train_gpt2cu
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm-c", metavar="BINARY", help="llm.c's train_gpt2cu, built as tests/bench/bench_gpu.py says")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("flags", nargs="*", default=["-e", "d12", "-b", "16", "-t", "1024", "-x", "2"],
                    help="train-gpu's flags besides -i -j (after --)")
    args = ap.parse_args()

    from llmc.core.export import write_gpt2_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["llmc", "prepro", "tinyshakespeare", "--builtin", "-o", tmp], check=True, capture_output=True)
        write_gpt2_tokenizer(Path(tmp) / "gpt2_tokenizer.bin")
        data = ["-i", f"{tmp}/tiny_shakespeare_train.bin", "-j", f"{tmp}/tiny_shakespeare_val.bin"]
        sides = {"llmc": ["llmc", "train-gpu", *data, *args.flags]}
        if args.llm_c:
            sides["llm.c"] = [args.llm_c, *data, *args.flags]
        times: dict[str, list[float]] = {name: [] for name in sides}
        for repeat in range(args.repeats + 1):
            for name, cmd in sides.items():
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                seconds = time.perf_counter() - start
                if proc.returncode:
                    sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                if repeat:  # the first run of each side warms its caches
                    times[name].append(seconds)
                print(f"{name:6s} run {repeat}: {seconds:6.2f} s" + ("" if repeat else " (warm-up, not counted)"),
                      flush=True)
    print(f"\nwhole process of `train-gpu {' '.join(args.flags)}`, median of {args.repeats} warm runs:")
    for name, ts in times.items():
        print(f"{name:6s} {statistics.median(ts):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()

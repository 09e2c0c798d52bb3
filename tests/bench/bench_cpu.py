"""CPU benchmark (make bench-cpu): llmc's NumPy trainer vs PyTorch eager on the same machine, same run.

GPT-2 d12 (V=50257), B=4, T=64, fp32: seconds per training step (forward, backward, AdamW) and
peak memory of each, measured in separate child processes so neither's memory counts for the other.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def bench_llmc(model: str, B: int, T: int, steps: int) -> dict:
    import llmc.core.cpu as cpu
    from llmc.core.init import load_params
    from llmc.core.model import GPT

    cfg, params = load_params(model)
    gpt = GPT(cfg, cpu, params, B, T)
    del params
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 1):
        x, y = rng.integers(0, cfg.vocab_size, (2, B, T))
        t0 = time.perf_counter()
        gpt.zero_grad()
        gpt.set_batch(x, y)
        gpt.forward(dloss=1.0 / (B * T))
        gpt.backward()
        norm = gpt.grad_norm()
        gpt.update(3e-4, 0.9, 0.95, 1e-8, 0.0, step + 1, min(1.0, 1.0 / norm))
        times.append(time.perf_counter() - t0)
    return {"s_per_step": float(np.median(times[1:])), "loss": gpt.mean_loss()}


def bench_torch(model: str, B: int, T: int, steps: int) -> dict:
    import torch

    from llmc.core.init import load_params
    from llmc.core.torch_gpt2 import GPT2

    cfg, params = load_params(model)
    net = GPT2(cfg, params)
    del params
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        x, y = (torch.from_numpy(a) for a in rng.integers(0, cfg.vocab_size, (2, B, T)))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = net(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"s_per_step": float(np.median(times[1:])), "loss": float(loss)}


def child(which: str, model: str, B: int, T: int, steps: int) -> None:
    result = (bench_llmc if which == "llmc" else bench_torch)(model, B, T, steps)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-e", default="d12", help="model descriptor or .bin")
    ap.add_argument("-b", type=int, default=4)
    ap.add_argument("-t", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", choices=["llmc", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.e, args.b, args.t, args.steps)
    results = {}
    for which in ("torch", "llmc"):
        cmd = [sys.executable, "-m", "tests.bench.bench_cpu", "--child", which, "-e", args.e,
               "-b", str(args.b), "-t", str(args.t), "--steps", str(args.steps)]
        results[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(f"GPT-2 {args.e} B={args.b} T={args.t} fp32, median of {args.steps} steps after one warmup")
    for which, r in results.items():
        print(f"  {which:6s} {r['s_per_step']:.3f} s/step  peak RSS {r['peak_rss_mib']:.0f} MiB")
    ratio = results["llmc"]["s_per_step"] / results["torch"]["s_per_step"]
    print(f"  llmc / torch time ratio: {ratio:.2f}x  (llmc is {1 / ratio:.2f}x as fast)")


if __name__ == "__main__":
    main()

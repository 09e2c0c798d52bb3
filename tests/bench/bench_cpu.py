"""CPU benchmark (make bench-cpu): llmc's NumPy trainer vs PyTorch eager on the same machine, same run:
the project's PyTorch reference (core/torch_gpt2.py) and the same GPT-2 written with nn modules and
fused SDPA as a PyTorch user would (`torch-nn`).

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


# llmc, the independent reference (core/torch_gpt2.py), and the same model in PyTorch's usual idioms
REFERENCES = ("llmc", "torch", "torch-nn")


def bench_llmc(model: str, B: int, T: int, steps: int) -> dict:
    import llmc.core.cpu as cpu
    from llmc.core import families
    from llmc.core.model import GPT
    from llmc.core.primitives import AdamW

    _, cfg, params = families.load(model)
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
        gpt.compute_grad_norm()
        norm = gpt.grad_norm()
        gpt.update(AdamW(lr=3e-4), step=step + 1, grad_scale=min(1.0, 1.0 / norm))
        times.append(time.perf_counter() - t0)
    return {"s_per_step": float(np.median(times[1:])), "loss": gpt.mean_loss()}


def idiomatic_gpt2(cfg, params: np.ndarray):
    """GPT-2 as a PyTorch user writes it (nanoGPT's idioms: nn.Linear/LayerNorm/Embedding modules, fused
    scaled_dot_product_attention, tied head), holding the given llm.c parameters."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from llmc.core.config import param_shapes
    from llmc.core.flat_model import views

    C, NH, V = cfg.channels, cfg.num_heads, cfg.vocab_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = (t.view(B, T, NH, -1).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.padded_vocab_size, C)
            self.wpe = nn.Embedding(cfg.max_seq_len, C)
            self.h = nn.ModuleList(Block() for _ in range(cfg.num_layers))
            self.lnf = nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.lnf(x), self.wte.weight)  # tied weights
            return logits, F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))

    net, p = GPT(), views(params, param_shapes(cfg))
    with torch.no_grad():
        net.wte.weight.copy_(torch.from_numpy(p["wte"]))
        net.wpe.weight.copy_(torch.from_numpy(p["wpe"]))
        net.lnf.weight.copy_(torch.from_numpy(p["lnfw"]))
        net.lnf.bias.copy_(torch.from_numpy(p["lnfb"]))
        for l, b in enumerate(net.h):
            for module, w, bias in ((b.ln1, "ln1w", "ln1b"), (b.qkv, "qkvw", "qkvb"), (b.proj, "attprojw", "attprojb"),
                                    (b.ln2, "ln2w", "ln2b"), (b.fc, "fcw", "fcb"), (b.fcproj, "fcprojw", "fcprojb")):
                module.weight.copy_(torch.from_numpy(p[w][l]))
                module.bias.copy_(torch.from_numpy(p[bias][l]))
    return net


def bench_torch(model: str, B: int, T: int, steps: int, idiomatic: bool) -> dict:
    import torch

    from llmc.core import families
    from llmc.core.torch_gpt2 import GPT2

    _, cfg, params = families.load(model)
    net = idiomatic_gpt2(cfg, params) if idiomatic else GPT2(cfg, params)
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
    if which == "llmc":
        result = bench_llmc(model, B, T, steps)
    else:
        result = bench_torch(model, B, T, steps, idiomatic=which == "torch-nn")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-e", default="d12", help="model descriptor or .bin")
    ap.add_argument("-b", type=int, default=4)
    ap.add_argument("-t", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", choices=REFERENCES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.e, args.b, args.t, args.steps)
    results = {}
    for which in REFERENCES:
        cmd = [sys.executable, "-m", "tests.bench.bench_cpu", "--child", which, "-e", args.e,
               "-b", str(args.b), "-t", str(args.t), "--steps", str(args.steps)]
        results[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(f"GPT-2 {args.e} B={args.b} T={args.t} fp32, median of {args.steps} steps after one warmup")
    for which, r in results.items():
        print(f"  {which:6s} {r['s_per_step']:.3f} s/step  peak RSS {r['peak_rss_mib']:.0f} MiB")
    for ref in REFERENCES[1:]:
        ratio = results["llmc"]["s_per_step"] / results[ref]["s_per_step"]
        print(f"  llmc / {ref} time ratio: {ratio:.2f}x  (llmc is {1 / ratio:.2f}x as fast)")


if __name__ == "__main__":
    main()

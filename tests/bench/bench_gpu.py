r"""GPU benchmark (make bench-gpu): llmc's GPU trainer vs a PyTorch reference of the same model, same
command, same GPU.

GPT-2 d12 (V=50257), T=1024, B=16 and B=64, no recompute, master weights, random tokens. llmc runs
train-gpu's own loop (llmc.core.train.Trainer) and takes the step times it prints: from one step's
loss/norm read-back to the next, so each holds a forward + backward graph, the norm and an AdamW.
The reference is PyTorch with torch.compile, flash attention (F.scaled_dot_product_attention), bf16
autocast and fused AdamW, fp32 weights, each step timed by host clock up to its loss read-back (as a
training loop that logs every step). Medians over the measured steps (means printed beside them), after
50 warm-up steps: an H100 at its power cap runs the first ~0.8 s of load faster, then slows down for
~0.3 s (e.g. llmc at B=16: 28.4 ms a step, then 32-33, back to 28.4 by ~1.2 s), for both sides. Each
configuration runs in its own child process; peak memory is the device's used memory (total - free,
llm.c's measure, CUDA context included) after the steps.
`--profile` adds llmc's per-primitive GPU time (CUDA events around each eager call).
`--sides llmc llmc-fp8 torch torch-fp8` (make bench-gpu's d12 and d48) adds llmc's -f8 1 and torchao's float8
training with tensorwise scaling on the reference's block linears (the output head stays bf16 on both).
`-e` takes any model llmc trains: `make bench-gpu-llama` runs Llama-3.2-1B's shape, whose reference is
transformers' LlamaForCausalLM (SDPA, grouped key/value heads) holding the same weights, under the same
torch.compile, bf16 autocast and fused AdamW (TORCH_REFERENCES: one reference per model family).

`--llm-c BINARY` (make bench-gpu LLM_C=BINARY) runs llm.c's train_gpt2cu too, on the same random tokens with
the same -b -t -r -ge, taking the step times it prints and its "device memory usage" line (cudaMemGetInfo
once its optimizer state is allocated). llm.c is not part of llmc; build it yourself, e.g. on a CUDA 13
machine with the pip wheels nvidia-cudnn-cu13 and nvidia-cudnn-frontend (headers in its include/):

    git clone https://github.com/karpathy/llm.c && cd llm.c
    mkdir -p cudnn-frontend && ln -s SITE/include cudnn-frontend/include   # cudnn_frontend.h's folder
    ln -s SITE/nvidia/cudnn/lib/libcudnn.so.9 /some/lib/libcudnn.so         # llm.c links -lcudnn
    ln -s "$(ldconfig -p | awk '/libnvidia-ml.so.1 /{print $NF; exit}')" /some/lib/libnvidia-ml.so
    # CUDA 13 changed cudaMemAdvise: drop the managed-memory fallback's hint in llmc/cuda_utils.cuh
    sed -i '/cudaMemAdvise(\*out, bytes, cudaMemAdviseSetPreferredLocation/d' llmc/cuda_utils.cuh
    make train_gpt2cu USE_CUDNN=1 NO_MULTI_GPU=1 NO_USE_MPI=1 GPU_COMPUTE_CAPABILITY=90 \
        NVCC_INCLUDES="-ISITE/include -ISITE/nvidia/cudnn/include" \
        NVCC_LDFLAGS="-lcublas -lcublasLt -L/some/lib -lcudnn -lnvrtc -lcuda -lnvidia-ml"
    export LD_LIBRARY_PATH=/some/lib:SITE/nvidia/cudnn/lib:$LD_LIBRARY_PATH

(SITE: the site-packages folder holding those wheels; ~60 s on 16 cores. Checked on the H200 device,
CUDA 13, llm.c master f1e2ace.)
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace

import numpy as np

def batches(cfg, B: int, T: int, n: int) -> list:
    rng = np.random.default_rng(0)
    return [rng.integers(0, cfg.vocab_size, (2, B, T)).astype(np.int32) for _ in range(n)]


STEP_MS = re.compile(r"^step .*\| ([0-9.]+) ms \|")  # train-gpu's and train_gpt2cu's step lines
STEP_LOSS = re.compile(r"^step .*\| loss ([0-9.]+)")


def random_shards(folder: str, model: str, B: int, T: int, steps: int) -> tuple:
    """train.bin (steps batches) and val.bin of random tokens below the model's vocab size; (family, config)."""
    from llmc.core import families
    from llmc.core.formats import write_shard

    family, cfg = families.load_config(model)  # the trainer draws the random init itself
    rng = np.random.default_rng(0)
    for split, n in (("train", B * T * steps + 1), ("val", B * T + 1)):
        write_shard(f"{folder}/{split}.bin", rng.integers(0, cfg.vocab_size, n),
                    "gpt-2" if cfg.vocab_size <= 2 ** 16 else "llama-3")
    return family, cfg


def step_lines(lines: list[str], warmup: int) -> dict:
    times = [float(m.group(1)) / 1e3 for m in map(STEP_MS.match, lines) if m]
    return {"times": times[warmup:], "losses": [float(m.group(1)) for m in map(STEP_LOSS.match, lines) if m]}


def bench_llmc(model: str, B: int, T: int, warmup: int, steps: int, recompute: int, gelu_fusion: int,
               fp8: int = 0) -> dict:
    """train-gpu's own loop (llmc.core.train.Trainer) on random tokens: the step times it prints."""
    from llmc.core.backends import get_backend
    from llmc.core.train import Trainer
    from llmc.core.train_config import TrainConfig

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        family, cfg = random_shards(tmp, model, B, T, warmup + steps)
        config = TrainConfig(train_data=f"{tmp}/train.bin", val_data=f"{tmp}/val.bin", model=model, B=B, T=T,
                             max_steps=warmup + steps, val_every=10 ** 9, val_max_steps=1, sample_every=0,
                             gelu_fusion=gelu_fusion, recompute=recompute, fp8=fp8)
        gpu = get_backend("gpu")
        Trainer(config, gpu, out=lines.append).run()
        mem = gpu.memory_usage()[0] / 2 ** 20  # llm.c's measure: the device's used memory
    return {"cfg": cfg, "family": family, "mem_mib": mem, **step_lines(lines, warmup)}


def bench_llm_c(binary: str, model: str, B: int, T: int, warmup: int, steps: int, recompute: int,
                gelu_fusion: int) -> dict:
    """llm.c's train_gpt2cu (a binary the user built) on the same random tokens: the step times it prints,
    and the device memory it reports once its optimizer state is allocated (cudaMemGetInfo, as llmc's)."""
    with tempfile.TemporaryDirectory() as tmp:
        family, cfg = random_shards(tmp, model, B, T, warmup + steps)
        if family.name != "gpt2":
            raise SystemExit(f"llm.c's train_gpt2cu trains GPT-2 only, not {family.name}")
        cmd = [binary, "-i", f"{tmp}/train.bin", "-j", f"{tmp}/val.bin", "-e", model, "-b", str(B), "-t", str(T),
               "-x", str(warmup + steps), "-v", str(10 ** 6), "-m", "1", "-s", "0", "-r", str(recompute),
               "-ge", str(gelu_fusion)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    mem = [float(m.group(1)) for m in map(re.compile(r"^device memory usage: (\d+) MiB").match, lines) if m]
    return {"cfg": cfg, "family": family, "mem_mib": mem[-1] if mem else float("nan"), **step_lines(lines, warmup)}


def profile_llmc(model: str, B: int, T: int, fp8: int = 0) -> list[tuple[str, float, int]]:
    """GPU milliseconds per primitive (and matmul shape) over one eager step, events around calls."""
    import cupy as cp

    from llmc.core import families
    from llmc.core.backends import get_backend
    from llmc.core.primitives import AdamW, Fp8

    gpu = get_backend("gpu")
    totals, counts = defaultdict(float), defaultdict(int)
    pending = []

    def timed(name, fn):
        def call(*args, **kwargs):
            key = name
            if name.startswith("matmul"):
                weight = args[2 if "forward" in name else 5 if name == "matmul_backward" else 7]
                key = f"{name} {tuple((weight.data if isinstance(weight, Fp8) else weight).shape)}" + \
                      (" gelu" if kwargs.get("pre_gelu") is not None else "")
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(gpu.runtime.current().stream)
            fn(*args, **kwargs)
            end.record(gpu.runtime.current().stream)
            pending.append((key, start, end))
        return call

    proxy = SimpleNamespace(**{n: getattr(gpu, n) for n in gpu.__all__})
    for n in gpu.__all__:
        if n.endswith(("_forward", "_backward", "_update", "_squared", "crossentropy", "_fp8")):
            setattr(proxy, n, timed(n, getattr(gpu, n)))
    family, cfg, params = families.load(model)
    net = family.Model(cfg, proxy, params, B, T, fp8=bool(fp8))
    x, y = batches(cfg, B, T, 1)[0]
    net.set_batch(x, y)
    for repeat in range(2):  # the first compiles and plans
        pending.clear()
        net.zero_grad()
        net.forward(dloss=1.0 / (B * T))
        net.backward()
        net.compute_grad_norm()
        net.update(AdamW(lr=3e-4), step=1)
        gpu.synchronize()
    for key, start, end in pending:
        totals[key] += cp.cuda.get_elapsed_time(start, end)
        counts[key] += 1
    return sorted(((k, totals[k], counts[k]) for k in totals), key=lambda r: -r[1])


def torch_gpt2(cfg, params: np.ndarray, device: str):
    """GPT-2 as PyTorch users write it: one parameter per layer tensor, tied embedding, flash SDPA; a
    module whose forward(idx, targets) is the mean loss."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from llmc.core.config import param_shapes
    from llmc.core.flat_model import views

    L, C, NH, V = cfg.num_layers, cfg.channels, cfg.num_heads, cfg.vocab_size
    tensors = {name: torch.from_numpy(np.ascontiguousarray(t)) for name, t in views(params, param_shapes(cfg)).items()}

    def linear(l: int, name: str) -> nn.Linear:  # a module, as torchao's float8 conversion finds them
        weight = tensors[name + "w"][l]
        module = nn.Linear(weight.shape[1], weight.shape[0], device=device)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(tensors[name + "b"][l])
        return module

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            p = lambda t: nn.Parameter(t.clone().to(device))  # noqa: E731
            self.wte, self.wpe = p(tensors["wte"]), p(tensors["wpe"])
            self.layers = nn.ModuleList()
            for l in range(L):
                layer = nn.Module()
                for name in ("ln1w", "ln1b", "ln2w", "ln2b"):
                    setattr(layer, name, p(tensors[name][l]))
                for name in ("qkv", "attproj", "fc", "fcproj"):
                    setattr(layer, name, linear(l, name))
                self.layers.append(layer)
            self.lnfw, self.lnfb = p(tensors["lnfw"]), p(tensors["lnfb"])

        def forward(self, idx, targets):
            Bt, Tt = idx.shape
            x = self.wte[idx] + self.wpe[:Tt]
            for m in self.layers:
                h = F.layer_norm(x, (C,), m.ln1w, m.ln1b, 1e-5)
                q, k, v = m.qkv(h).view(Bt, Tt, 3, NH, C // NH).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(Bt, Tt, C)
                x = x + m.attproj(y)
                h = F.layer_norm(x, (C,), m.ln2w, m.ln2b, 1e-5)
                x = x + m.fcproj(F.gelu(m.fc(h), approximate="tanh"))
            logits = F.linear(F.layer_norm(x, (C,), self.lnfw, self.lnfb, 1e-5), self.wte)
            return F.cross_entropy(logits[..., :V].float().view(-1, V), targets.view(-1))

    return Reference()


def torch_llama3(cfg, params: np.ndarray, device: str):
    """Llama 3 as PyTorch users run it: transformers' LlamaForCausalLM (SDPA attention, which takes the
    grouped key/value heads) holding llmc's weights (core/hf_llama's mapping, checked against llmc's logits
    in tests/core/test_hf_llama.py); a module whose forward(idx, targets) is the mean loss."""
    import torch
    import torch.nn.functional as F
    import transformers
    from torch import nn

    from llmc.core import hf_llama

    hf = transformers.LlamaConfig(**hf_llama.hf_config(cfg, tied=False), attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in hf_llama.llmc_to_hf(cfg, params, tied=False).items()})

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.to(device)

        def forward(self, idx, targets):
            logits = self.model(idx).logits
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))

    return Reference()


TORCH_REFERENCES = {"gpt2": torch_gpt2, "llama3": torch_llama3}
# -fp8: llmc's -f8 1; PyTorch's FP8 is torchao's float8 training with tensorwise scaling (the recipe -f8 1
# follows) on the blocks' linear layers, the output head left in bf16 as llmc's
SIDES = ("llmc", "llmc-fp8", "torch", "torch-fp8", "llm.c")
RATIOS = (("llmc", "torch"), ("llmc", "llm.c"), ("llmc-fp8", "llmc"), ("llmc-fp8", "torch-fp8"))


def bench_torch(model: str, B: int, T: int, warmup: int, steps: int, fp8: bool = False) -> dict:
    import torch

    from llmc.core import families

    family, cfg, params = families.load(model)
    torch.backends.cuda.matmul.allow_tf32 = True
    net = TORCH_REFERENCES[family.name](cfg, params, "cuda")
    del params
    if fp8:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        convert_to_float8_training(net, config=Float8LinearConfig.from_recipe_name("tensorwise"),
                                   module_filter_fn=lambda module, fqn: fqn.startswith(("layers.", "model.layers.")))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)
    compiled = torch.compile(net)
    data = [tuple(torch.from_numpy(a).long() for a in xy) for xy in batches(cfg, B, T, 4)]
    times, losses = [], []
    for step in range(warmup + steps):
        x, y = data[step % len(data)]
        t0 = time.perf_counter()
        x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    free, total = torch.cuda.mem_get_info()
    return {"cfg": cfg, "family": family, "times": times[warmup:], "losses": losses, "mem_mib": (total - free) / 2 ** 20}


def child(args) -> None:
    B, common = args.b[0], (args.e, args.b[0], args.t, args.warmup, args.steps)
    if args.child in ("llmc", "llmc-fp8"):
        r = bench_llmc(*common, args.r, args.ge, fp8=int(args.child == "llmc-fp8"))
    elif args.child == "llm.c":
        r = bench_llm_c(args.llm_c, *common, args.r, args.ge)
    else:
        r = bench_torch(*common, fp8=args.child == "torch-fp8")
    dt = float(np.median(r["times"]))
    tok_s = B * args.t / dt
    out = {"ms": dt * 1e3, "mean_ms": float(np.mean(r["times"])) * 1e3, "tok_s": tok_s,
           "flops_per_s": tok_s * r["family"].flops_per_token(r["cfg"], args.t),
           "mem_mib": r["mem_mib"], "first_loss": r["losses"][0], "last_loss": r["losses"][-1],
           "spread_ms": (max(r["times"]) - min(r["times"])) * 1e3}
    print(json.dumps(out), flush=True)  # before the profile: a profile that fails loses no measurement
    if args.profile and args.child in ("llmc", "llmc-fp8"):
        print(json.dumps({"profile": profile_llmc(args.e, B, args.t, fp8=int(args.child == "llmc-fp8"))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-e", default="d12", help="model descriptor or .bin")
    ap.add_argument("-b", type=int, nargs="+", default=[16, 64], help="batch sizes")
    ap.add_argument("-t", type=int, default=1024)
    ap.add_argument("-r", type=int, default=0, choices=[0, 1, 2],
                    help="recompute, for llmc and llm.c (as their -r; the PyTorch reference recomputes nothing)")
    ap.add_argument("--warmup", type=int, default=50,
                    help="steps not timed: under a power cap the clock settles over the first ~1.2 s")
    ap.add_argument("--steps", type=int, default=50, help="measured steps (the median is printed)")
    ap.add_argument("--llm-c", metavar="BINARY",
                    help="an llm.c train_gpt2cu you built: it runs too, on the same tokens (GPT-2 only)")
    ap.add_argument("--sides", nargs="+", choices=SIDES,
                    help="which to run (default: llmc and torch, and llm.c with --llm-c)")
    ap.add_argument("--profile", action="store_true", help="llmc's per-primitive GPU time")
    ap.add_argument("-ge", type=int, default=2, choices=[0, 1, 2], help="GELU fusion (as train-gpu -ge)")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import cupy as cp
    from llmc.core.mfu import promised_bf16_flops

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    promised = promised_bf16_flops(device)
    sides = args.sides or ["llmc", "torch"] + (["llm.c"] if args.llm_c else [])
    if "llm.c" in sides and not args.llm_c:
        ap.error("the llm.c side needs --llm-c BINARY")
    rows = []
    for B in args.b:
        results = {}
        for which in sides:
            cmd = [sys.executable, "-m", "tests.bench.bench_gpu", "--child", which, "-e", args.e, "-b", str(B),
                   "-t", str(args.t), "-r", str(args.r), "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "-ge", str(args.ge)] + (["--llm-c", args.llm_c] if args.llm_c else [])
            if args.profile:
                cmd.append("--profile")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout, proc.stderr, file=sys.stderr)
            r = {}  # the child's JSON lines: the measurement, then its profile
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    r.update(json.loads(line))
            results[which] = r if "ms" in r else None
            if results[which] is None:
                continue
            r["mfu"] = r["flops_per_s"] / promised if promised > 0 else -1.0  # llm.c's -100% when unknown
            print(f"{which:9s} B={B:3d}: {r['ms']:8.2f} ms/step {r['tok_s']:9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
                  f"mem {r['mem_mib'] / 1024:5.2f} GiB  loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}  "
                  f"(mean {r['mean_ms']:.2f} ms, spread {r['spread_ms']:.2f} ms)", flush=True)
            profile = r.get("profile", [])
            for key, ms, n in profile:
                print(f"      {ms:8.3f} ms  {n:4d}x  {key}")
            if profile:  # the same time by primitive (every shape of a matmul together), and in all
                by_primitive = defaultdict(float)
                for key, ms, _ in profile:
                    by_primitive[key.split()[0]] += ms
                total = sum(by_primitive.values())
                print("      by primitive: " + ", ".join(f"{name} {ms:.2f} ms ({100 * ms / total:.0f}%)" for name, ms
                                                          in sorted(by_primitive.items(), key=lambda kv: -kv[1]))
                      + f"; {total:.2f} ms in all")
        rows.append((B, results))
    print(f"\n{args.e}, T={args.t}, -r {args.r} (PyTorch: no recompute), {device}; "
          f"median of {args.steps} steps after {args.warmup}")
    ratios = [(a, b) for a, b in RATIOS if a in sides and b in sides]
    print("| B | " + " | ".join(f"{s} ms/step | {s} tok/s | {s} MFU | {s} mem GiB" for s in sides) + " | " +
          " | ".join(f"{a}/{b}" for a, b in ratios) + " |")
    print("|---" * (1 + 4 * len(sides) + len(ratios)) + "|")
    for B, res in rows:
        cells = []
        for which in sides:
            r = res.get(which)
            cells += ["-"] * 4 if r is None else [f"{r['ms']:.2f}", f"{r['tok_s']:.0f}", f"{100 * r['mfu']:.1f}%",
                                                  f"{r['mem_mib'] / 1024:.2f}"]
        cells += [f"{res[a]['tok_s'] / res[b]['tok_s']:.2f}x" if res.get(a) and res.get(b) else "-"
                  for a, b in ratios]
        print(f"| {B} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

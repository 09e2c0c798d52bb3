"""Sampling benchmark: tokens/s of core/sample.py's generation with and without the KV cache.

GPT-2 d12 (random init, V=50257), from <|endoftext|>, llm.c's sampler (xorshift seeded 1337), in one
process: with the cache each token runs one position; without it, the whole prefix again (llm.c's
way). On the CPU both draw the same tokens; on the GPU, cuBLAS rounds a one-row product differently
from a many-row one, so the draws may part after a while (same_tokens says whether they did).
Example: python -m tests.bench.bench_sample --tokens 64 128
"""

import argparse
import json
import time

import numpy as np


def tokens_per_second(family, cfg, params, xp, n: int, kv_cache: bool) -> tuple[float, list[int]]:
    from llmc.core.rand import XorShift
    from llmc.core.sample import generate

    t0 = time.perf_counter()
    tokens = list(generate(family.KVCacheModel, cfg, params, xp, [50256], n, XorShift(1337), kv_cache=kv_cache))
    if hasattr(xp, "cuda"):
        xp.cuda.Device().synchronize()
    return n / (time.perf_counter() - t0), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="d12")
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()

    from llmc.core.backends import get_backend
    from llmc.core import families

    backend = get_backend(args.device)
    family, cfg, params = families.load(args.model)
    params = backend.to_device(params, np.float32)
    tokens_per_second(family, cfg, params, backend.xp, 4, True)  # warm up (BLAS threads, CuPy kernels)
    results = []
    for n in args.tokens:
        cached, a = tokens_per_second(family, cfg, params, backend.xp, n, True)
        full, b = tokens_per_second(family, cfg, params, backend.xp, n, False)
        results.append({"tokens": n, "kv_cache_tok_s": round(cached, 2), "no_kv_cache_tok_s": round(full, 2),
                        "speedup": round(cached / full, 2), "same_tokens": a == b})
        print(json.dumps({"model": args.model, "device": args.device, **results[-1]}), flush=True)


if __name__ == "__main__":
    main()

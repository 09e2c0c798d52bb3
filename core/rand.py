"""llm.c's random numbers: mt19937 seeded like torch.manual_seed, torch-compatible normal_,
Fisher-Yates permutations (data loader) and the xorshift sampler RNG.

The raw mt19937 stream comes from NumPy's MT19937 with llm.c's (= torch's) integer seeding, so
whole tensors are drawn vectorized; the state can be saved and restored for exact resume.
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MT19937:
    """One mt19937 stream, as llm.c's mt19937_state (manual_seed, randint32, normal_)."""

    def __init__(self, seed: int):
        self.bitgen = np.random.MT19937()
        self.bitgen._legacy_seeding(seed)  # init_genrand(seed): the recurrence torch and llm.c use
        self.generator = np.random.Generator(self.bitgen)

    def randint32(self, n: int) -> np.ndarray:
        # Generator.integers over the full uint32 range returns the raw 32-bit outputs, without the
        # uint64 array random_raw makes
        return self.generator.integers(0, 1 << 32, size=n, dtype=np.uint32)

    def randfloat32(self, n: int) -> np.ndarray:
        """(u & (2^24 - 1)) / 2^24 in fp32, as randfloat32."""
        return _uniform24(self.randint32(n))

    def normal(self, n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """n normals exactly as llm.c's normal_ (torch's CPU normal_): Box-Muller over blocks of 16."""
        return self.normal_fill(np.empty(n, dtype=np.float32), mean, std)

    def normal_fill(self, out: np.ndarray, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """normal(out.size) written into the float32 array out, in place. The stream is drawn in order in
        chunks while a thread pool turns earlier chunks into normals (NumPy's math releases the GIL), so
        a billion parameters take seconds, not minutes."""
        if not out.flags.c_contiguous:  # a reshape would fill a copy
            raise ValueError("normal_fill needs a contiguous array")
        flat = out.reshape(-1)
        n = flat.size
        if n < 16:
            flat[...] = self._normal_small(n, mean, std)
            return out
        full = n // 16 * 16
        jobs = [_pool().submit(_box_muller_16, flat[i: i + step].reshape(-1, 16), self.randint32(step), mean, std)
                for i in range(0, full, _CHUNK) for step in [min(_CHUNK, full - i)]]
        for job in jobs:
            job.result()
        if n % 16:  # llm.c draws all n uniforms, then redoes the last 16 values from fresh ones
            self.randint32(n - full)
            _box_muller_16(flat[n - 16:].reshape(1, 16), self.randint32(16), mean, std)
        return out

    def _normal_small(self, n: int, mean: float, std: float) -> np.ndarray:
        # numel < 16: pairs from two doubles each; 53-bit doubles from two 32-bit draws
        out = np.empty(n, dtype=np.float32)
        for t in range(0, n, 2):
            hi, lo, hi2, lo2 = (int(x) for x in self.randint32(4))
            u1 = np.float32(((hi << 32 | lo) & ((1 << 53) - 1)) / float(1 << 53))
            u2 = np.float32(((hi2 << 32 | lo2) & ((1 << 53) - 1)) / float(1 << 53))
            radius = np.sqrt(np.float32(-2) * np.log(np.float32(1) - u2 + np.float32(1e-12)))
            theta = np.float32(2.0 * np.pi * float(u1))
            out[t] = radius * np.cos(theta) * np.float32(std) + np.float32(mean)
            if t + 1 < n:
                out[t + 1] = np.float32(float(radius) * float(np.sin(theta))) * np.float32(std) + np.float32(mean)
        return out

    def permutation(self, n: int) -> np.ndarray:
        """llm.c's random_permutation of the identity: i from n-1 down to 1 swaps with randint32 % (i+1)."""
        perm = np.arange(n, dtype=np.int64)
        if n > 1:
            draws = self.randint32(n - 1)
            for i, r in zip(range(n - 1, 0, -1), draws):
                j = int(r) % (i + 1)
                perm[i], perm[j] = perm[j], perm[i]
        return perm

    def permute(self, perm: np.ndarray) -> None:
        """Shuffle an existing permutation in place, as random_permutation on a non-identity array."""
        n = len(perm)
        if n > 1:
            draws = self.randint32(n - 1)
            for i, r in zip(range(n - 1, 0, -1), draws):
                j = int(r) % (i + 1)
                perm[i], perm[j] = perm[j], perm[i]

    def get_state(self) -> dict:
        return self.bitgen.state

    def set_state(self, state: dict) -> None:
        self.bitgen.state = state


_CHUNK = 1 << 18  # normals per thread-pool job (a multiple of 16)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="llmc-normal")


def _uniform24(raw: np.ndarray) -> np.ndarray:
    return (raw & 0xFFFFFF).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _box_muller_16(out: np.ndarray, raw: np.ndarray, mean: float, std: float) -> None:
    """normal_fill_16 into rows of 16 from as many raw draws: the first 8 uniforms of a row pair with
    the last 8 (fp32 math, as llm.c)."""
    u = _uniform24(raw).reshape(-1, 16)
    u1 = np.float32(1) - u[:, :8]
    radius = np.sqrt(np.float32(-2) * np.log(u1 + np.float32(1e-12)))
    theta = (2.0 * np.pi * u[:, 8:].astype(np.float64)).astype(np.float32)
    std, mean = np.float32(std), np.float32(mean)
    out[:, :8] = radius * np.cos(theta) * std + mean
    out[:, 8:] = radius * np.sin(theta) * std + mean


class XorShift:
    """llm.c's sampler RNG (random_u32 / random_f32), seeded 1337 for mid-training samples."""

    def __init__(self, state: int = 1337):
        self.state = state

    def u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def f32(self) -> float:
        return float(np.float32((self.u32() >> 8) / 16777216.0))

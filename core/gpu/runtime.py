"""The GPU backend's runtime: CuPy, the backend's own CUDA stream, the kernel loader, launch
checks and never-freed scratch buffers (a captured CUDA graph keeps pointing at them).

Everything runs on the backend's own stream, made CuPy's current stream on import, so array code
in the training loop (`grads.fill(0)`) stays ordered with the primitives and lands in the same
graph when captured. It is a blocking stream: work someone queues on the legacy default stream
still waits for it (and the other way round) instead of racing.
"""

import functools
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.mfu import promised_bf16_flops

try:
    import cupy as cp
    import cupyx
except ImportError as e:
    raise LlmcError("CuPy is not installed: pip install 'llmc[gpu]' (CUDA 12) or 'llmc[gpu13]' (CUDA 13) "
                    "to use the GPU backend") from e
try:
    import ml_dtypes
except ImportError as e:
    raise LlmcError("ml_dtypes (CuPy's bfloat16 dtype) is not installed: pip install ml_dtypes") from e

try:
    _num_devices = cp.cuda.runtime.getDeviceCount()
except cp.cuda.runtime.CUDARuntimeError as e:
    raise LlmcError(f"no usable CUDA GPU: {e}") from e
if _num_devices == 0:
    raise LlmcError("no CUDA GPU found: the GPU backend needs an NVIDIA GPU")

BF16 = np.dtype(ml_dtypes.bfloat16)
KERNELS = Path(__file__).parent / "kernels"
DEVICE = cp.cuda.Device()
NUM_SMS = DEVICE.attributes["MultiProcessorCount"]

stream = cp.cuda.Stream(non_blocking=False)
stream.use()
# a second stream for work forked from `stream` and joined back within one primitive (a weight
# gradient GEMM beside the input gradient GEMM); CUDA graph capture follows the fork and the join
side_stream = cp.cuda.Stream(non_blocking=True)


def wait_for(waiter: "cp.cuda.Stream", other: "cp.cuda.Stream") -> None:
    """Make `waiter` wait for the work queued so far on `other` (an event between them, capturable):
    the fork to the side stream and the join back."""
    event = cp.cuda.Event(disable_timing=True)
    event.record(other)
    waiter.wait_event(event)


# ----------------------------------------------------------------------------- kernels

def _source(path: Path) -> str:
    """The file's text with its local `#include "x.cuh"` inlined (CuPy's compile cache keys on the
    source text, so an edited header must change it) and `#line` markers keeping error positions."""
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.match(r'\s*#include\s+"([^"]+)"', line)
        if match:
            out.append(_source(KERNELS / match.group(1)))
            out.append(f'#line {number + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out)


@functools.cache
def _module(name: str) -> "cp.RawModule":
    return cp.RawModule(code=_source(KERNELS / f"{name}.cu"), options=("-std=c++17",))


@functools.cache
def kernel(file: str, name: str) -> "cp.RawKernel":
    """The extern "C" kernel `name` of core/gpu/kernels/<file>.cu, compiled once (cached on disk)."""
    return _module(file).get_function(name)


def launch(file: str, name: str, grid: int | tuple, block: int | tuple, args: tuple, shared_mem: int = 0,
           on: "cp.cuda.Stream | None" = None) -> None:
    """Launch a kernel on the backend's stream (or `on`)."""
    k = kernel(file, name)
    if shared_mem > 48 * 1024 and k.max_dynamic_shared_size_bytes < shared_mem:
        k.max_dynamic_shared_size_bytes = shared_mem
    grid = grid if isinstance(grid, tuple) else (grid,)
    block = block if isinstance(block, tuple) else (block,)
    with on or stream:  # RawKernel launches on CuPy's current stream
        k(grid, block, args, shared_mem=shared_mem)


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def ptr(arr) -> np.uint64:
    """A kernel argument for an optional array: its device pointer, or null."""
    return np.uint64(0 if arr is None else arr.data.ptr)


# ----------------------------------------------------------------------------- checks

def check(ok: bool, message: str) -> None:
    if not ok:
        raise LlmcError(message)


def check_arrays(op: str, dtype, *arrays) -> None:
    """Each array is a contiguous CuPy array of dtype (None entries skipped), 16-byte aligned."""
    for a in arrays:
        if a is None:
            continue
        check(isinstance(a, cp.ndarray), f"{op}: expected a CuPy array, got {type(a).__name__}")
        check(a.dtype == dtype, f"{op}: expected {np.dtype(dtype).name} arrays, got {a.dtype.name}")
        check(a.flags.c_contiguous, f"{op}: arrays must be contiguous")
        check(a.data.ptr % 16 == 0, f"{op}: arrays must be 16-byte aligned")


def rows(x) -> tuple[int, int]:
    """(N, C) of an array seen as rows of its last dimension."""
    return x.size // x.shape[-1], x.shape[-1]


# ----------------------------------------------------------------------------- scratch memory

_scratch: dict[str, Any] = {}
_retired: list = []  # outgrown buffers: a captured graph may still use them, so never freed


def scratch(tag: str, nbytes: int):
    """A device buffer of at least nbytes (uint8), reused across calls with the same tag."""
    buf = _scratch.get(tag)
    if buf is None or buf.nbytes < nbytes:
        check(not stream.is_capturing(),
              f"GPU scratch '{tag}' would be allocated inside a CUDA graph capture; run the step once eagerly first")
        if buf is not None:
            _retired.append(buf)
        buf = _scratch[tag] = cp.empty(max(nbytes, 256), dtype=cp.uint8)
    return buf


# ----------------------------------------------------------------------------- the backend's host API

def to_device(host, dtype=None):
    arr = np.asarray(host)
    arr = np.ascontiguousarray(arr if dtype is None else arr.astype(dtype, copy=False))
    return cp.asarray(arr)


def to_host(arr):
    host = cp.asnumpy(arr, stream=stream)
    return host.astype(np.float32) if host.dtype == BF16 or host.dtype == np.float16 else host


def synchronize() -> None:
    stream.synchronize()


def fetch(*arrays) -> Callable[[], list[np.ndarray]]:
    """Queue copies of the (contiguous) arrays into pinned host memory at this point of the stream;
    the returned callable waits for them (an event, not the whole stream) and gives the host arrays."""
    pinned = [cupyx.empty_pinned(a.shape, a.dtype) for a in arrays]
    for host, a in zip(pinned, arrays):
        check(a.flags.c_contiguous, "fetch: arrays must be contiguous")
        cp.cuda.runtime.memcpyAsync(host.ctypes.data, a.data.ptr, a.nbytes, cp.cuda.runtime.memcpyDeviceToHost,
                                    stream.ptr)
    done = cp.cuda.Event(disable_timing=True)
    done.record(stream)

    def wait() -> list[np.ndarray]:
        done.synchronize()
        return [np.array(host) for host in pinned]  # copies: the pinned blocks go back to CuPy's pool

    return wait


def promised_flops() -> float:
    """This device's dense bf16 FLOP/s (llm.c's MFU denominator), -1 when unknown (llm.c prints -100%)."""
    return promised_bf16_flops(cp.cuda.runtime.getDeviceProperties(DEVICE.id)["name"].decode())


def graph(fn: Callable[[], None]) -> Callable[[], None]:
    """fn as a CUDA graph. The first call runs fn eagerly (compiling kernels, building cuBLASLt and
    cuDNN plans, sizing scratch), the second captures it on the backend's stream and launches the
    graph, later calls only launch. Host scalars given to the primitives inside fn are fixed at
    capture; buffer contents are read at each replay."""
    state: dict[str, Any] = {"calls": 0, "graph": None}

    def run() -> None:
        state["calls"] += 1
        if state["calls"] == 1:
            with stream:
                fn()
            return
        if state["graph"] is None:
            with stream:
                stream.begin_capture()
                try:
                    fn()
                finally:
                    captured = stream.end_capture()
            state["graph"] = captured
        state["graph"].launch(stream)

    return run

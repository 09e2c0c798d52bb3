"""The GPU backend's runtime: CuPy, the GPU this process uses and the backend's own CUDA streams
(taken by init, explicitly: importing the backend touches no GPU), the kernel loader, launch checks
and never-freed scratch buffers (a captured CUDA graph keeps pointing at them).

Everything runs on the backend's own stream, made CuPy's current stream by init, so array code
in the training loop (`grads.fill(0)`) stays ordered with the primitives and lands in the same
graph when captured. It is a blocking stream: work someone queues on the legacy default stream
still waits for it (and the other way round) instead of racing.
"""

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.gpu import sources
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

BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class Gpu:
    """The GPU this process trains on, and the backend's streams there."""
    id: int
    name: str
    sms: int  # multiprocessors
    max_shared_memory: int  # per block, opted in
    compute_capability: str
    stream: "cp.cuda.Stream"  # where every primitive runs (blocking: ordered with the legacy default stream)
    side_stream: "cp.cuda.Stream"  # side work forked from `stream`, joined back where the stream needs it


_gpu: Gpu | None = None


def init(device: int | None = None) -> Gpu:
    """Take GPU `device` for this process (once; again only with the same device, or None): make it
    current and create the backend's streams there, the stream becoming CuPy's current stream. None
    keeps the GPU taken already, or takes GPU 0."""
    global _gpu
    if _gpu is not None:
        if device is not None and _gpu.id != device:
            raise LlmcError(f"the GPU backend already runs on GPU {_gpu.id}, not {device}")
        return _gpu
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except cp.cuda.runtime.CUDARuntimeError as e:
        raise LlmcError(f"no usable CUDA GPU: {e}") from e
    if count == 0:
        raise LlmcError("no CUDA GPU found: the GPU backend needs an NVIDIA GPU")
    device = device or 0
    if not 0 <= device < count:
        raise LlmcError(f"GPU {device} does not exist: this machine has {count}")
    gpu = cp.cuda.Device(device)
    gpu.use()
    stream = cp.cuda.Stream(non_blocking=False)
    stream.use()
    _gpu = Gpu(device, cp.cuda.runtime.getDeviceProperties(device)["name"].decode(),
               gpu.attributes["MultiProcessorCount"], gpu.attributes["MaxSharedMemoryPerBlockOptin"],
               gpu.compute_capability, stream, cp.cuda.Stream(non_blocking=True))
    return _gpu


def current() -> Gpu:
    """The GPU init took."""
    if _gpu is None:
        raise LlmcError("the GPU backend was used before llmc.core.gpu.runtime.init(device)")
    return _gpu


def wait_for(waiter: "cp.cuda.Stream", other: "cp.cuda.Stream") -> None:
    """Make `waiter` wait for the work queued so far on `other` (an event between them, capturable)."""
    event = cp.cuda.Event(disable_timing=True)
    event.record(other)
    waiter.wait_event(event)


# ----------------------------------------------------------------------------- side work
# Memory-bound kernels whose results nothing needs right away (backward's bias gradients) run on
# the side stream beside the stream's compute-bound GEMMs instead of between them.
# Each piece of side work is kept with an event and the memory it reads and writes: a primitive
# that declares what it touches waits for the pieces it would race with (`settle`), every other
# primitive for all of them (`after_side_work`), as do read-backs and the end of a graph capture.

_side_work: list[tuple["cp.cuda.Event", list[tuple[int, int]], list[tuple[int, int]]]] = []


def _spans(arrays) -> list[tuple[int, int]]:
    return [(a.data.ptr, a.data.ptr + a.nbytes) for a in arrays if a is not None]


def _overlap(spans: list[tuple[int, int]], others: list[tuple[int, int]]) -> bool:
    return any(lo < other_hi and other_lo < hi for lo, hi in spans for other_lo, other_hi in others)


def beside(work: Callable[["cp.cuda.Stream"], None], reads: tuple, writes: tuple) -> None:
    """Queue work(side_stream) after what the stream holds so far, without the stream waiting for it;
    it reads only `reads` and writes only `writes` (arrays)."""
    gpu = current()
    wait_for(gpu.side_stream, gpu.stream)
    work(gpu.side_stream)
    done = cp.cuda.Event(disable_timing=True)
    done.record(gpu.side_stream)
    _side_work.append((done, _spans(reads), _spans(writes)))


def settle(reads: tuple = (), writes: tuple = ()) -> None:
    """Make the stream wait for the side work it would race with by reading `reads` and writing
    `writes`: the last such piece (the side stream runs its pieces in order)."""
    reads, writes = _spans(reads), _spans(writes)
    last = max((i for i, (_, side_reads, side_writes) in enumerate(_side_work)
                if _overlap(writes, side_reads + side_writes) or _overlap(reads, side_writes)), default=-1)
    if last >= 0:
        current().stream.wait_event(_side_work[last][0])
        del _side_work[:last + 1]


def join_side_work() -> None:
    """Make the stream wait for all side work queued so far."""
    if _side_work:
        current().stream.wait_event(_side_work[-1][0])
        _side_work.clear()


def after_side_work(primitive: Callable) -> Callable:
    """A primitive that waits for all side work first (one that does not declare what it touches)."""
    @functools.wraps(primitive)
    def run(*args, **kwargs):
        join_side_work()
        return primitive(*args, **kwargs)
    return run


def time_ms(run: Callable[[], None], runs: int, on: "cp.cuda.Stream | None" = None) -> float:
    """Mean milliseconds of `runs` calls of run() queued on `on` (default: the stream), after one
    untimed call that loads its kernel. For choosing among kernels, eagerly: it synchronizes."""
    on = on or current().stream
    start, end = cp.cuda.Event(), cp.cuda.Event()
    run()
    start.record(on)
    for _ in range(runs):
        run()
    end.record(on)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / runs


# ----------------------------------------------------------------------------- kernels

@functools.cache
def _module(name: str, pack: int) -> "cp.RawModule":
    return cp.RawModule(code=sources.source(name), options=sources.options(pack))


@functools.cache
def kernel(file: str, name: str, pack: int = 8) -> "cp.RawKernel":
    """The extern "C" kernel `name` of core/gpu/kernels/<file>.cu built for packs of `pack` bf16
    (common.cuh's PACK), compiled once per width (cached on disk)."""
    return _module(file, pack).get_function(name)


def launch(file: str, name: str, grid: int | tuple, block: int | tuple, args: tuple, shared_mem: int = 0,
           on: "cp.cuda.Stream | None" = None, pack: int = 8) -> None:
    """Launch a kernel, built for packs of `pack` bf16 (pack_width), on the backend's stream (or `on`)."""
    k = kernel(file, name, pack)
    if shared_mem > 48 * 1024 and k.max_dynamic_shared_size_bytes < shared_mem:
        k.max_dynamic_shared_size_bytes = shared_mem
    grid = grid if isinstance(grid, tuple) else (grid,)
    block = block if isinstance(block, tuple) else (block,)
    with on or current().stream:  # RawKernel launches on CuPy's current stream
        k(grid, block, args, shared_mem=shared_mem)


@functools.cache
def kernel_parameters(file: str, name: str) -> tuple[str, ...]:
    """The parameter names of kernel `name` in kernels/<file>.cu, in order, read from its signature."""
    signature = re.search(rf'extern "C" __global__ void {name}\(([^)]*)\)', (sources.KERNELS / f"{file}.cu").read_text())
    check(signature is not None, f"{file}.cu has no kernel {name}")
    return tuple(re.findall(r"(\w+)\s*(?:,|$)", signature.group(1).strip()))


def launch_named(file: str, name: str, grid: int | tuple, block: int | tuple, **args) -> None:
    """launch() with the arguments by name, put in the order the kernel's signature declares them."""
    params = kernel_parameters(file, name)
    check(set(args) == set(params), f"{name}: arguments {sorted(set(args) ^ set(params))} differ from {file}.cu's")
    launch(file, name, grid, block, tuple(args[p] for p in params))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def ptr(arr) -> np.uint64:
    """A kernel argument for an optional array: its device pointer, or null."""
    return np.uint64(0 if arr is None else arr.data.ptr)


# ----------------------------------------------------------------------------- checks

def check(ok: bool, message: str) -> None:
    if not ok:
        raise LlmcError(message)


def check_arrays(op: str, dtype, *arrays, align: int = 1) -> None:
    """Each array is a contiguous CuPy array of dtype (None entries skipped) starting at a multiple of
    `align` bytes. Kernels over views at any offset (the model's per-layer slices) take align 1 and
    choose their access width from the pointers (pack_width)."""
    for a in arrays:
        if a is None:
            continue
        check(isinstance(a, cp.ndarray), f"{op}: expected a CuPy array, got {type(a).__name__}")
        check(a.dtype == dtype, f"{op}: expected {np.dtype(dtype).name} arrays, got {a.dtype.name}")
        check(a.flags.c_contiguous, f"{op}: arrays must be contiguous")
        check(a.data.ptr % align == 0, f"{op}: arrays must be {align}-byte aligned")


def aligned(*arrays, to: int = 16) -> bool:
    """Every array (None entries skipped) starts at a multiple of `to` bytes."""
    return all(a.data.ptr % to == 0 for a in arrays if a is not None)


def pack_width(row: int, *arrays) -> int:
    """The bf16 per vector access (kernels/common.cuh's PACK) for rows of `row` elements of the bf16
    arrays: 8 (16 bytes) where row and every array's start allow it, as at every shape with C a
    multiple of 8, else the widest of 4, 2 and 1 that they allow."""
    for pack in (8, 4, 2):
        if row % pack == 0 and aligned(*arrays, to=2 * pack):
            return pack
    return 1


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
        check(not current().stream.is_capturing(),
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
    join_side_work()
    host = cp.asnumpy(arr, stream=current().stream)
    return host.astype(np.float32) if host.dtype == BF16 or host.dtype == np.float16 else host


def synchronize() -> None:
    join_side_work()
    current().stream.synchronize()


def fetch(*arrays) -> Callable[[], list[np.ndarray]]:
    """Queue copies of the (contiguous) arrays into pinned host memory at this point of the stream;
    the returned callable waits for them (an event, not the whole stream) and gives the host arrays."""
    join_side_work()
    stream = current().stream
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


def device_name() -> str:
    return current().name


def memory_usage() -> tuple[int, int]:
    """(in use by all of the device's users, total) bytes, as llm.c's "device memory usage"."""
    free, total = cp.cuda.runtime.memGetInfo()
    return total - free, total


def promised_flops() -> float:
    """This device's dense bf16 FLOP/s (llm.c's MFU denominator), -1 when unknown (llm.c prints -100%)."""
    return promised_bf16_flops(current().name)


def graph(fn: Callable[[], None]) -> Callable[[], None]:
    """fn as a CUDA graph. The first call runs fn eagerly (compiling kernels, building cuBLASLt and
    cuDNN plans, sizing scratch), the second captures it on the backend's stream and launches the
    graph, later calls only launch. Host scalars given to the primitives inside fn are fixed at
    capture; buffer contents are read at each replay."""
    state: dict[str, Any] = {"calls": 0, "graph": None}

    def run() -> None:
        stream = current().stream
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
                    join_side_work()  # a capture must end with every forked stream joined
                finally:
                    captured = stream.end_capture()
            state["graph"] = captured
        state["graph"].launch(stream)

    return run

"""Data-parallel training over NCCL (llm.c's llmc/zero.cuh): the process group, the ncclUniqueId
exchange (-pi mpi|tcp|fs) and ZeRO-1's sharding arithmetic.

Only the 128-byte ncclUniqueId travels over MPI, a TCP socket or a shared file; NCCL carries every
tensor. CuPy (and mpi4py for -pi mpi) are imported only when a group of several processes starts,
so one process runs with SingleProcess, whose collectives do nothing.

ZeRO-1 shards the flat parameter vector into equal contiguous slices, one per rank (the last one
padded with zeros, as NCCL's reduce-scatter and all-gather need equal counts): one collective a step
each way. llm.c instead shards each layer of each parameter tensor separately, and its -z 1 state files
hold that layout; llmc's state files hold it too (llm_c_shard_pieces: the model converts when it
checkpoints and resumes), so llm.c and llmc resume each other's multi-GPU runs. Where a layer's size is
not a multiple of the number of ranks, llm.c's layout leaves elements out of every shard; llmc then
writes its own contiguous shards, which only llmc resumes.
"""

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.formats import atomic_write

ALIGN = 8  # shard boundaries on multiples of 8 elements: 16-byte aligned bf16 for the vectorized kernels
TCP_PORT = 12345  # llm.c's
ID_FILE = "ncclUniqueId.bin"
TIMEOUT = 300.0  # seconds a rank waits for the unique id
# NCCL's ABI enums (nccl.h), stable across releases; CuPy's module does not export them all
NCCL_SUM, NCCL_MAX, NCCL_AVG = 0, 2, 4
NCCL_TYPES = {"float32": 7, "float64": 8, "bfloat16": 9}


# ----------------------------------------------------------------------------- sharding arithmetic

@dataclass(frozen=True)
class Shard:
    """This rank's slice [start, stop) of a flat vector padded to `padded` elements."""
    start: int
    stop: int
    padded: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def zero_shard(n: int, world: int, rank: int) -> Shard:
    """ZeRO-1: rank's equal, ALIGN-multiple slice of n elements split over world ranks."""
    if n < 1 or world < 1 or not 0 <= rank < world:
        raise LlmcError(f"cannot shard {n} elements for rank {rank} of {world}")
    size = -(-n // (world * ALIGN)) * ALIGN
    return Shard(rank * size, (rank + 1) * size, world * size)


def whole(n: int) -> Shard:
    """No sharding: every rank holds all n elements."""
    return Shard(0, n, n)


def shard_pieces(shapes: dict[str, tuple[int, ...]], shard: Shard) -> list[tuple[int, str, int, int]]:
    """The tensors a shard cuts, in order: (tensor index, name, lo, hi) with [lo, hi) in flat-vector
    coordinates, so AdamW applies each tensor's own weight decay to its part of the shard. The padding
    past the last tensor belongs to no tensor."""
    out, offset = [], 0
    for i, (name, shape) in enumerate(shapes.items()):
        n = int(np.prod(shape))
        lo, hi = max(offset, shard.start), min(offset + n, shard.stop)
        if lo < hi:
            out.append((i, name, lo, hi))
        offset += n
    return out


BLOCK_TENSORS = range(2, 14)  # llm.c's tensor table (GPT-2's and Llama 3's files): the (L, ...) block tensors


def llm_c_shard_pieces(shapes: dict[str, tuple[int, ...]], world: int, rank: int) -> list[tuple[int, int]] | None:
    """llm.c's ZeRO-1 share of the optimizer state for rank of world (train_gpt2.cu's gpt2_update): of every
    tensor, of each of its layers, the rank-th of `world` equal slices; flat [lo, hi) ranges in the order
    the rank's state file holds them. None where some tensor's layer does not split into `world` equal
    slices (llm.c would leave the remainder out of every shard)."""
    pieces, offset = [], 0
    for i, shape in enumerate(shapes.values()):
        layers = shape[0] if i in BLOCK_TENSORS else 1
        size = int(np.prod(shape)) // layers
        if size % world:
            return None
        share = size // world
        pieces += [(offset + l * size + rank * share, offset + l * size + (rank + 1) * share) for l in range(layers)]
        offset += layers * size
    return pieces


# ----------------------------------------------------------------------------- the unique-id exchange

def id_to_bytes(uid: bytes | tuple[int, ...]) -> bytes:
    """CuPy's ncclUniqueId (bytes in CuPy 13+, a tuple of 128 C chars before) as the bytes that travel."""
    return bytes(uid) if isinstance(uid, bytes) else bytes(c & 0xFF for c in uid)


def id_from_bytes(payload: bytes) -> tuple[int, ...]:
    """The tuple NcclCommunicator takes back (signed chars, as on x86-64)."""
    if len(payload) != 128:
        raise LlmcError(f"the ncclUniqueId received has {len(payload)} bytes, not 128")
    return tuple(np.frombuffer(payload, dtype=np.int8).tolist())


def exchange_fs(payload: bytes | None, rank: int, directory: str, timeout: float = TIMEOUT) -> bytes:
    """Rank 0 writes payload to DIR/ncclUniqueId.bin (atomically: a reader never sees half of it);
    the others poll for it. Returns the payload on every rank."""
    path = Path(directory) / ID_FILE
    if rank == 0:
        try:
            with atomic_write(path) as f:
                f.write(payload)
        except OSError as e:
            raise LlmcError(f"-pi fs: cannot write {path}: {e.strerror}") from None
        return payload
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise LlmcError(f"-pi fs: rank 0 wrote no {path} within {timeout:.0f} s (is -pf a shared directory?)")
        time.sleep(0.05)
    return path.read_bytes()


def remove_fs_id(directory: str) -> None:
    """After every rank joined: the next run must not read this run's id."""
    (Path(directory) / ID_FILE).unlink(missing_ok=True)


def exchange_tcp(payload: bytes | None, rank: int, world: int, host: str, port: int = TCP_PORT,
                 timeout: float = TIMEOUT) -> bytes:
    """Rank 0 listens on host:port and sends payload to each of the world - 1 ranks that connect;
    they retry connecting until it listens. Returns the payload on every rank."""
    deadline = time.monotonic() + timeout
    if rank == 0:
        with socket.create_server((host, port), backlog=world) as server:
            for _ in range(world - 1):
                server.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    raise LlmcError(f"-pi tcp: not every rank connected to {host}:{port} "
                                    f"within {timeout:.0f} s") from None
                with conn:
                    conn.sendall(payload)
        return payload
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())) as conn:
                chunks = []
                while chunk := conn.recv(4096):
                    chunks.append(chunk)
                return b"".join(chunks)
        except OSError:
            if time.monotonic() > deadline:
                raise LlmcError(f"-pi tcp: no rank 0 listening on {host}:{port} within {timeout:.0f} s") from None
            time.sleep(0.1)


def _mpi_world():
    try:
        from mpi4py import MPI
    except ImportError:
        raise LlmcError("-pi mpi needs mpi4py (pip install mpi4py); or start each process with "
                        "-pn N -pr RANK -pi fs -pf DIR or -pi tcp -ps IP") from None
    return MPI.COMM_WORLD


def mpi_rank_size(num_processes: int, rank: int) -> tuple[int, int]:
    """(rank, size) under mpirun: OpenMPI's environment when -pn/-pr were left at 1/0 (as llm.c)."""
    if num_processes == 1 and rank == 0 and "OMPI_COMM_WORLD_SIZE" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
    return rank, num_processes


# ----------------------------------------------------------------------------- process groups

class Group(Protocol):
    """The processes training one model together: this process's rank of world, and the collectives
    the model and loop use (in place on flat device buffers; host_reduce on a few host numbers)."""
    rank: int
    world: int

    def all_reduce_mean(self, buf) -> None: ...
    def reduce_scatter_mean(self, buf) -> None: ...
    def all_gather(self, buf) -> None: ...
    def all_reduce_sum(self, buf) -> None: ...
    def barrier(self) -> None: ...
    def host_reduce(self, values: list[float], op: str = "sum") -> list[float]: ...
    def abort(self, reason: str) -> None: ...


class SingleProcess:
    """World of one: every collective leaves its buffer as it is."""
    rank, world = 0, 1

    def all_reduce_mean(self, buf) -> None: pass
    def reduce_scatter_mean(self, buf) -> None: pass
    def all_gather(self, buf) -> None: pass
    def all_reduce_sum(self, buf) -> None: pass
    def barrier(self) -> None: pass

    def host_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        return list(values)

    def abort(self, reason: str) -> None:
        raise LlmcError(reason)  # one process never waits for another; nothing watches it


class ProcessGroup:
    """NCCL over `world` processes, one GPU each, on the GPU backend's stream. Buffers are flat,
    contiguous CuPy arrays; reduce_scatter_mean and all_gather work in place on a buffer of
    world * shard elements, this rank's shard being slice rank."""

    def __init__(self, rank: int, world: int, unique_id: bytes, device: int):
        from cupy.cuda import nccl

        from llmc.core.gpu.runtime import cp, current
        self.rank, self.world, self.device = rank, world, device
        self.stream = current().stream
        as_tuple = id_from_bytes(unique_id)  # checks the length too
        try:
            self.comm = nccl.NcclCommunicator(world, unique_id, rank)  # CuPy 13+ takes the bytes
        except TypeError:
            self.comm = nccl.NcclCommunicator(world, as_tuple, rank)  # older CuPy: a tuple of chars
        self.host_buf = cp.zeros(8, dtype=np.float64)

    def _args(self, buf) -> tuple:
        return buf.data.ptr, buf.size, NCCL_TYPES[buf.dtype.name]

    def all_reduce_mean(self, buf) -> None:
        ptr, n, dtype = self._args(buf)
        self.comm.allReduce(ptr, ptr, n, dtype, NCCL_AVG, self.stream.ptr)

    def all_reduce_sum(self, buf) -> None:
        ptr, n, dtype = self._args(buf)
        self.comm.allReduce(ptr, ptr, n, dtype, NCCL_SUM, self.stream.ptr)

    def reduce_scatter_mean(self, buf) -> None:
        ptr, n, dtype = self._args(buf)
        count = n // self.world
        self.comm.reduceScatter(ptr, ptr + self.rank * count * buf.itemsize, count, dtype, NCCL_AVG, self.stream.ptr)

    def all_gather(self, buf) -> None:
        ptr, n, dtype = self._args(buf)
        count = n // self.world
        self.comm.allGather(ptr + self.rank * count * buf.itemsize, ptr, count, dtype, self.stream.ptr)

    def host_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum or max of a few host numbers over all ranks (losses, a stop request)."""
        buf = self.host_buf[: len(values)]
        buf.set(np.asarray(values, dtype=np.float64), stream=self.stream)
        ptr, n, dtype = self._args(buf)
        self.comm.allReduce(ptr, ptr, n, dtype, {"sum": NCCL_SUM, "max": NCCL_MAX}[op], self.stream.ptr)
        return buf.get(stream=self.stream).tolist()

    def barrier(self) -> None:
        self.host_reduce([0.0])

    def abort(self, reason: str) -> None:
        """One line and exit 1 now, from any thread: the main thread may be waiting in a collective for a
        rank that is gone, which nothing else ends (the process's exit frees the GPU and its NCCL kernels)."""
        print(f"Error: {reason}", file=sys.stderr, flush=True)
        os._exit(1)


class Watchdog:
    """Ends this rank, through group.abort, when its steps stop completing: a rank that died or hangs leaves
    the others waiting in NCCL's collectives forever (NCCL has no timeout of its own). A thread watches a
    deadline that the loop moves on at each completed step, and further around work that may take long on
    one rank while the others wait (the first steps' compiling and tuning, evaluations, checkpoints)."""

    def __init__(self, group: Group, seconds: float, first: float):
        self.group, self.seconds = group, seconds
        self.allowed, self.deadline = first, time.monotonic() + first
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="llmc-watchdog", daemon=True)
        self.thread.start()

    def kick(self, seconds: float | None = None) -> None:
        """The ranks made progress: the next must come within seconds (default: the watchdog's)."""
        self.allowed = self.seconds if seconds is None else seconds
        self.deadline = time.monotonic() + self.allowed

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.stopped.wait(min(1.0, self.seconds / 4)):
            if time.monotonic() > self.deadline:
                self.group.abort(f"rank {self.group.rank}: no step completed in {self.allowed:.0f} s: another rank "
                                 f"died or hangs (--rank-timeout)")
                return


def init(num_processes: int, rank: int, gpus_per_node: int, method: str, server_ip: str | None,
         fs_path: str | None) -> Group:
    """The group of this process (llm.c's multi_gpu_config_init); takes the local GPU (rank %
    gpus_per_node) for the GPU backend (runtime.init), whose stream NCCL then runs on."""
    if method not in ("mpi", "tcp", "fs"):
        raise LlmcError(f"-pi takes mpi, tcp or fs, not {method!r}")
    comm = None
    if method == "mpi":
        rank, num_processes = mpi_rank_size(num_processes, rank)
        if num_processes > 1:
            comm = _mpi_world()
            rank, num_processes = comm.Get_rank(), comm.Get_size()
    if num_processes < 1 or not 0 <= rank < num_processes:
        raise LlmcError(f"-pr {rank} must be a rank in 0..{num_processes - 1} of -pn {num_processes}")
    if num_processes == 1:
        return SingleProcess()
    if gpus_per_node < 1:
        raise LlmcError(f"-pg takes the number of GPUs per node (>= 1), not {gpus_per_node}")
    if method == "tcp" and not server_ip:
        raise LlmcError("-pi tcp needs the server IP of rank 0: -ps IP")
    if method == "fs" and not fs_path:
        raise LlmcError("-pi fs needs a directory all ranks share: -pf DIR")
    try:
        import cupy as cp
        from cupy.cuda import nccl
    except ImportError as e:
        raise LlmcError(f"multi-GPU training needs CuPy with NCCL: {e}") from None
    if not getattr(nccl, "available", True):  # CuPy found no NCCL library
        raise LlmcError("multi-GPU training needs NCCL for CuPy: pip install nvidia-nccl-cu12 (or -cu13), "
                        "or see CuPy's installation guide")
    device = rank % gpus_per_node
    if device >= cp.cuda.runtime.getDeviceCount():
        raise LlmcError(f"rank {rank} wants GPU {device} (rank % -pg {gpus_per_node}), but this node has "
                        f"{cp.cuda.runtime.getDeviceCount()}")
    from llmc.core.gpu import runtime  # here: a single process never needs the GPU backend for its group

    runtime.init(device)
    uid = id_to_bytes(nccl.get_unique_id()) if rank == 0 else None
    if method == "mpi":
        uid = comm.bcast(uid, root=0)
    elif method == "tcp":
        uid = exchange_tcp(uid, rank, num_processes, server_ip)
    else:
        uid = exchange_fs(uid, rank, fs_path)
    group = ProcessGroup(rank, num_processes, uid, device)
    if method == "fs":
        group.barrier()  # everyone has read the id
        if rank == 0:
            remove_fs_id(fs_path)
    return group

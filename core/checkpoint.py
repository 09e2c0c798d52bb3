"""llm.c's training checkpoints: DIR/model_%08d.bin, DIR/state_%08d_%05d.bin, then DIR/DONE_%08d.

The model file is llm.c's (fp32 v3 when the backend's parameters are fp32, bf16 v5 otherwise). The
state file is llm.c's save_state layout, little-endian, so llm.c's load_state reads it:
  header 256 int32: [0] 20240527, [1] 1, [2] num processes, [3] rank, [4] master weights follow,
    [5] the loader shuffles, [10] step, u64 at [20] and [22] the stochastic-rounding RNG (llm.c's
    rng_state, rng_state_last_update), size_t at [30] shard index, [32] sample index
  fp32 m, v (num_parameters each; with -z 1, this rank's share of them in llm.c's per-tensor layout,
    core/distributed.py), then fp32 master weights (likewise) if [4]
  if shuffling: size_t shard count, int32 shard order, size_t samples in the current shard, int32
    sample order, llm.c's mt19937_state struct (u64 seed, int32 left, uint32 next, uint32 state[624],
    uint32 MATRIX_A[2]; 2520 bytes, no padding) holding the loader's stream exactly
  llmc's trailer, after everything llm.c reads: int32 TRAILER_MAGIC, int32 version, then the loss and the
    grad-norm OutlierDetector as llm.c's struct (double buffer[128], int32 count, int32 index,
    double sum, double sum_sq), so -sl/-sg z-scores also resume exactly. A file without it (written
    by llm.c) resumes with empty detectors. Version 1 (earlier llmc) held -z 1 state as contiguous
    slices of the flat vector, not in llm.c's layout; it still resumes.
The one field llmc cannot fill as llm.c would is the RNG at [20]/[22]: llmc seeds stochastic rounding
from the step (stateless), so it writes llm.c's initial value 13371337 + rank there (a valid
xorshift state for llm.c to continue from) and ignores the field when reading.

With several processes, rank 0 writes the model file and DONE (once every rank's state file is
written), each rank its own state file. Every file is written atomically (temporary name, fsync,
rename) and DONE comes last, so a kill at any moment leaves every earlier checkpoint complete;
deletion removes DONE first for the same reason.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.formats import HEADER_BYTES, atomic_write, make_header, read_header
from llmc.core.outliers import WINDOW, OutlierDetector

STATE_MAGIC, STATE_VERSION = 20240527, 1
TRAILER_MAGIC, TRAILER_VERSION = 0x434D4C4C, 2  # "LLMC"
CONTIGUOUS_SHARDS_VERSION = 1  # its -z 1 state: contiguous slices of the flat vector
MT_N = 624  # mt19937 state words
MT_MATRIX_A = (0x0, 0x9908B0DF)
MT_STRUCT = np.dtype([("seed", "<u8"), ("left", "<i4"), ("next", "<u4"), ("state", "<u4", (MT_N,)),
                      ("matrix_a", "<u4", (2,))])  # llm.c's mt19937_state
DETECTOR_STRUCT = np.dtype([("buffer", "<f8", (WINDOW,)), ("count", "<i4"), ("index", "<i4"),
                            ("sum", "<f8"), ("sum_sq", "<f8")])  # llm.c's OutlierDetector
LLMC_RNG_SEED = 13371337  # llm.c's initial stochastic-rounding RNG state (+ rank)
LOADER_SEED = 42  # llm.c's shuffle seed (+ rank)


@dataclass
class TrainState:
    """Everything of a run at a step boundary that the model file does not hold."""
    step: int
    m: np.ndarray  # (num_parameters,) fp32 AdamW first moment (-z 1: this rank's share, for all three)
    v: np.ndarray  # (num_parameters,) fp32 second moment
    master: np.ndarray | None  # (num_parameters,) fp32 master weights, when the params are bf16
    loader: dict  # DataLoader.state(): shard, sample and, when shuffling, shard_order, sample_order, rng
    detectors: list[OutlierDetector] | None  # loss, grad norm; None from a file llm.c wrote
    num_processes: int = 1
    rank: int = 0
    llm_c_layout: bool = True  # -z 1 state in llm.c's per-tensor layout (False: an earlier llmc's contiguous)


# ----------------------------------------------------------------------------- paths

def model_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"model_{step:08d}.bin"


def state_path(out_dir: str | os.PathLike, step: int, rank: int = 0) -> Path:
    return Path(out_dir) / f"state_{step:08d}_{rank:05d}.bin"


def done_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"DONE_{step:08d}"


def done_steps(out_dir: str | os.PathLike) -> list[int]:
    """Steps with a DONE file, ascending (llm.c's find_max_step looks at the same names)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := re.fullmatch(r"DONE_(\d+)", p.name)))


def find_latest(out_dir: str | os.PathLike, rank: int = 0) -> int | None:
    """The newest step whose DONE, model and state files all exist."""
    for step in reversed(done_steps(out_dir)):
        if model_path(out_dir, step).is_file() and state_path(out_dir, step, rank).is_file():
            return step
    return None


# ----------------------------------------------------------------------------- mt19937 <-> llm.c

def mt_to_llmc(state: dict, seed: int) -> np.ndarray:
    """NumPy's MT19937 state -> llm.c's mt19937_state. NumPy's pos counts words drawn from the
    current block (624: twist next); llm.c keeps next_ = pos and left_ = 625 - pos (1: twist next)."""
    s = np.zeros((), dtype=MT_STRUCT)
    pos = int(state["state"]["pos"])
    s["seed"], s["left"], s["next"] = seed, MT_N + 1 - pos, pos
    s["state"] = np.asarray(state["state"]["key"], dtype=np.uint32)
    s["matrix_a"] = MT_MATRIX_A
    return s


def mt_from_llmc(s: np.ndarray, where: str = "state file") -> dict:
    if tuple(int(a) for a in s["matrix_a"]) != MT_MATRIX_A:
        raise LlmcError(f"{where}: the loader's mt19937 state is corrupt (bad MATRIX_A)")
    left, nxt = int(s["left"]), int(s["next"])
    if left > 1 and not 0 <= nxt < MT_N:
        raise LlmcError(f"{where}: the loader's mt19937 position {nxt} is out of range")
    pos = MT_N if left <= 1 else nxt
    return {"bit_generator": "MT19937", "state": {"key": s["state"].astype(np.uint32), "pos": pos}}


# ----------------------------------------------------------------------------- outlier detectors

def detector_to_llmc(d: OutlierDetector) -> np.ndarray:
    """Our window is chronological; as llm.c's ring buffer that is index 0 = oldest."""
    s = np.zeros((), dtype=DETECTOR_STRUCT)
    s["buffer"][: len(d.window)] = list(d.window)
    s["count"], s["index"], s["sum"], s["sum_sq"] = len(d.window), 0, d.sum, d.sum_sq
    return s


def detector_from_llmc(s: np.ndarray, where: str = "state file") -> OutlierDetector:
    count, index = int(s["count"]), int(s["index"])
    if not 0 <= count <= WINDOW or not 0 <= index < WINDOW or (index and count < WINDOW):
        raise LlmcError(f"{where}: corrupt outlier detector (count {count}, index {index})")
    d = OutlierDetector()
    ring = s["buffer"][:count] if count < WINDOW else np.roll(s["buffer"], -index)
    d.window.extend(float(x) for x in ring)
    d.sum, d.sum_sq = float(s["sum"]), float(s["sum_sq"])  # as saved, not re-summed: bit-exact z-scores
    return d


# ----------------------------------------------------------------------------- state files

def write_state(path: str | os.PathLike, s: TrainState) -> None:
    """llm.c's save_state layout plus llmc's trailer (see the module docstring)."""
    shuffle = "shard_order" in s.loader
    header = make_header(STATE_MAGIC, STATE_VERSION, s.num_processes, s.rank, s.master is not None, shuffle)
    header[10] = s.step
    rng = LLMC_RNG_SEED + s.rank
    header[20:24] = np.array([rng, rng], dtype="<u8").view("<i4")
    header[30:34] = np.array([s.loader["shard"], s.loader["sample"]], dtype="<u8").view("<i4")
    with atomic_write(path) as f:
        f.write(header.tobytes())
        for arr in (s.m, s.v) + ((s.master,) if s.master is not None else ()):
            _write_array(f, arr, "<f4")
        if shuffle:
            for arr in (s.loader["shard_order"], s.loader["sample_order"]):
                f.write(np.array([len(arr)], dtype="<u8").tobytes())
                _write_array(f, arr, "<i4")
            f.write(mt_to_llmc(s.loader["rng"], LOADER_SEED + s.rank).tobytes())
        if s.detectors is not None:
            f.write(np.array([TRAILER_MAGIC, TRAILER_VERSION], dtype="<i4").tobytes())
            for d in s.detectors:
                f.write(detector_to_llmc(d).tobytes())


def _write_array(f: BinaryIO, arr: np.ndarray, dtype: str) -> None:
    f.write(memoryview(np.ascontiguousarray(arr, dtype=dtype)).cast("B"))


class _Reader:
    """Sequential reads that check every length against the file, so a bad count cannot allocate."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.size = path, os.path.getsize(path)
        self.f = open(path, "rb")
        self.f.seek(HEADER_BYTES)

    def read(self, dtype, count: int = 1) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count < 0 or self.f.tell() + count * dtype.itemsize > self.size:
            raise LlmcError(f"{self.path}: optimizer state is truncated (or belongs to a model of another size)")
        return np.fromfile(self.f, dtype=dtype, count=count)

    def remaining(self) -> int:
        return self.size - self.f.tell()


def state_origin(path: str | os.PathLike) -> tuple[int, int, int]:
    """(step, num processes, rank) of a state file, from its header."""
    h = read_header(path, STATE_MAGIC, (STATE_VERSION,), "optimizer state")
    return int(h[10]), int(h[2]), int(h[3])


def read_state(path: str | os.PathLike, num_parameters: int) -> TrainState:
    """A state file written by llmc or llm.c, for a model of num_parameters."""
    h = read_header(path, STATE_MAGIC, (STATE_VERSION,), "optimizer state")
    nproc, rank, has_master, shuffle, step = (int(h[i]) for i in (2, 3, 4, 5, 10))
    raw = np.frombuffer(h.astype("<i4").tobytes(), dtype="<u8")
    shard, sample = int(raw[15]), int(raw[16])
    if nproc < 1 or not 0 <= rank < nproc or has_master not in (0, 1) or shuffle not in (0, 1) or step < 0:
        raise LlmcError(f"{path}: corrupt optimizer state header")
    r = _Reader(path)
    with r.f:
        m, v = r.read("<f4", num_parameters), r.read("<f4", num_parameters)
        master = r.read("<f4", num_parameters) if has_master else None
        loader = {"shard": shard, "sample": sample}
        if shuffle:
            for key in ("shard_order", "sample_order"):
                n = int(r.read("<u8")[0])
                loader[key] = r.read("<i4", n).astype(np.int64)
            loader["rng"] = mt_from_llmc(r.read(MT_STRUCT)[0], str(path))
        detectors, version = None, None
        if r.remaining():
            magic, version = (int(x) for x in r.read("<i4", 2))
            if magic != TRAILER_MAGIC or version not in (CONTIGUOUS_SHARDS_VERSION, TRAILER_VERSION) \
                    or r.remaining() != 2 * DETECTOR_STRUCT.itemsize:
                raise LlmcError(f"{path}: {r.remaining() + 8} unexpected bytes after the optimizer state "
                                f"(written for a model of a different size?)")
            detectors = [detector_from_llmc(r.read(DETECTOR_STRUCT)[0], str(path)) for _ in range(2)]
    return TrainState(step, m, v, master, loader, detectors, nproc, rank, version != CONTIGUOUS_SHARDS_VERSION)


def trailer_version(path: str | os.PathLike) -> int | None:
    """The version of llmc's trailer at the end of a state file; None where it has none (llm.c wrote it)."""
    size, at = os.path.getsize(path), 2 * DETECTOR_STRUCT.itemsize + 8
    if size < HEADER_BYTES + at:
        return None
    with open(path, "rb") as f:
        f.seek(size - at)
        magic, version = np.fromfile(f, "<i4", count=2)
    return int(version) if magic == TRAILER_MAGIC else None


# ----------------------------------------------------------------------------- whole checkpoints

def find_resumable(out_dir: str | os.PathLike, rank: int) -> int | None:
    """The step -y 1 resumes from: the newest complete checkpoint; None in a folder with none. A DONE
    without this rank's files (another -pn wrote them) is named, not skipped."""
    done = done_steps(out_dir)
    if not done:
        return None
    step = find_latest(out_dir, rank)
    if step is None:
        newest = done[-1]
        missing = [p for p in (model_path(out_dir, newest), state_path(out_dir, newest, rank)) if not p.is_file()]
        raise LlmcError(f"{missing[0]} is missing, though {done_path(out_dir, newest).name} marks checkpoint "
                        f"{newest} complete (a run of another -pn writes other state files)")
    return step


def restore(out_dir: str | os.PathLike, step: int, model, loader, num_processes: int,
            rank: int) -> tuple[TrainState, str | None]:
    """llm.c's load_state: checkpoint step's optimizer state into the model (the family's training
    model: load_optimizer_state) and its data order into the loader; (the state, a note for the user)."""
    path = state_path(out_dir, step, rank)
    written = state_origin(path)  # before reading: another -pn means another state size
    if written != (step, num_processes, rank):
        raise LlmcError(f"{path}: written at step {written[0]} by rank {written[2]} of {written[1]}, "
                        f"not step {step} by rank {rank} of {num_processes}; resume with the same -pn")
    # an earlier llmc's -z 1 files hold contiguous shards (the shard's size), not llm.c's shares
    size = model.shard.size if trailer_version(path) == CONTIGUOUS_SHARDS_VERSION else model.state_size
    try:
        state = read_state(path, size)
    except LlmcError as e:
        if num_processes == 1:
            raise
        raise LlmcError(f"{e}; resume with the same -z (the state files hold {size} "
                        f"parameters' optimizer state here)") from None
    try:
        loader.restore(state.loader)
        note = model.load_optimizer_state(state.m, state.v, state.master, state.llm_c_layout)
    except LlmcError as e:
        raise LlmcError(f"{path}: {e}") from None
    return state, note


def save_checkpoint(out_dir: str | os.PathLike, write_model: Callable, cfg, params: np.ndarray, bf16: bool,
                    state: TrainState, barrier: Callable[[], None] = lambda: None) -> None:
    """model (rank 0, through the family's write_model), state (every rank), then DONE (rank 0, once
    barrier says every rank's state is written): the DONE file marks the checkpoint complete."""
    step = state.step

    def write(path: Path, writer: Callable[[Path], None]) -> None:  # a full disk names the file and step
        try:
            writer(path)
        except OSError as e:
            raise LlmcError(f"cannot write {path}, the checkpoint of step {step}: {e.strerror or e}") from None

    done_path(out_dir, step).unlink(missing_ok=True)  # rewriting a step: incomplete until DONE is back
    if state.rank == 0:
        write(model_path(out_dir, step), lambda p: write_model(p, cfg, params, "bf16" if bf16 else "fp32"))
    write(state_path(out_dir, step, state.rank), lambda p: write_state(p, state))
    barrier()
    if state.rank == 0:
        write(done_path(out_dir, step), _write_empty)
    _fsync_dir(out_dir)


def _write_empty(path: Path) -> None:
    with atomic_write(path):
        pass


def delete_checkpoint(out_dir: str | os.PathLike, step: int, rank: int = 0) -> None:
    """DONE first, so an interrupted deletion never leaves a DONE without its files. Rank 0 owns DONE
    and the model file; the other ranks delete only their state file."""
    if rank == 0:
        done_path(out_dir, step).unlink(missing_ok=True)
    state_path(out_dir, step, rank).unlink(missing_ok=True)
    if rank == 0:
        model_path(out_dir, step).unlink(missing_ok=True)


def prune_checkpoints(out_dir: str | os.PathLike, keep: int, major_every: int, rank: int = 0) -> list[int]:
    """Keep the newest `keep` checkpoints (0 = all) and, forever, steps divisible by major_every;
    returns the deleted steps. Also removes the files an interrupted deletion left without a DONE."""
    done = done_steps(out_dir)
    if keep <= 0 or not done:
        return []
    deleted = [s for s in done[:-keep] if not (major_every > 0 and s % major_every == 0)]
    for s in deleted:
        delete_checkpoint(out_dir, s, rank)
    models = r"model_(?P<model>\d+)\.bin|" if rank == 0 else ""  # the model files are rank 0's
    pattern = re.compile(rf"{models}state_(?P<state>\d+)_{rank:05d}\.bin")
    for p in Path(out_dir).iterdir():
        if (m := pattern.fullmatch(p.name)) and (step := int(m["state"] or m.groupdict().get("model"))) < done[-1] \
                and step not in done:
            p.unlink(missing_ok=True)
    return deleted


def _fsync_dir(out_dir: str | os.PathLike) -> None:
    """Make the renames durable across a power loss too, not only a killed process."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Data-parallel training without GPUs: ZeRO-1's sharding arithmetic, the data split, per-rank state
files, the ncclUniqueId exchange between local processes, and the whole Trainer run as 2 ranks (threads
over an in-memory process group on the CPU backend) against one process with the same total batch."""

import multiprocessing
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmc.core import checkpoint, cpu
from llmc.core.config import GPTConfig, num_parameters, param_shapes
from llmc.core.dataloader import DataLoader
from llmc.core.distributed import (ALIGN, SingleProcess, exchange_fs, exchange_tcp, id_from_bytes, id_to_bytes,
                                   llm_c_shard_pieces, shard_pieces, whole, zero_shard)
from llmc.core.errors import LlmcError
from llmc.core.formats import write_shard
from llmc.core.outliers import OutlierDetector
from llmc.core.rundir import RunDir
from llmc.core.train import Trainer
from llmc.core.train_config import TrainConfig
from llmc.tests.core.training_data import write_model_and_shards

CFG = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=2, num_heads=2, channels=36)


# ----------------------------------------------------------------------------- sharding arithmetic

@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 7, 8, 16])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1000, 4097, 124475904, num_parameters(CFG)])
def test_shards_are_equal_aligned_and_tile_the_padded_vector(n, world):
    shards = [zero_shard(n, world, r) for r in range(world)]
    size = shards[0].size
    assert all(s.size == size and s.padded == world * size for s in shards)
    assert size % ALIGN == 0 and n <= world * size < n + world * ALIGN  # the least padding that keeps alignment
    assert [s.start for s in shards] == [r * size for r in range(world)]
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:])) and shards[-1].stop == world * size
    if n % (world * ALIGN) == 0:
        assert size == n // world  # llm.c's shard size


def test_bad_shard_requests():
    for n, world, rank in ((0, 2, 0), (10, 0, 0), (10, 2, 2), (10, 2, -1)):
        with pytest.raises(LlmcError):
            zero_shard(n, world, rank)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8, 64])
def test_shard_pieces_cover_every_parameter_once(world):
    shapes = param_shapes(CFG)
    n = num_parameters(CFG)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes.values()])
    names = list(shapes)
    seen = np.zeros(n, dtype=np.int64)
    for r in range(world):
        shard = zero_shard(n, world, r)
        for i, name, lo, hi in shard_pieces(shapes, shard):
            assert names[i] == name and offsets[i] <= lo < hi <= offsets[i + 1]  # inside its tensor
            assert shard.start <= lo and hi <= shard.stop  # inside the shard
            seen[lo:hi] += 1
    assert (seen == 1).all()


def test_whole_has_one_piece_per_tensor():
    shapes = param_shapes(CFG)
    pieces = shard_pieces(shapes, whole(num_parameters(CFG)))
    assert [(i, name) for i, name, _, _ in pieces] == list(enumerate(shapes))


def llm_c_assemble(shares: list[np.ndarray], shapes: dict) -> np.ndarray:
    """The whole optimizer-state vector from every rank's -z 1 share, by train_gpt2.cu's gpt2_update: tensor i
    (offset o, layers L, a layer's size s) keeps rank r's slice [r s/N, (r+1) s/N) of layer l at o/N + l s/N."""
    world, offset, out = len(shares), 0, []
    for i, shape in enumerate(shapes.values()):
        layers = shape[0] if 2 <= i <= 13 else 1
        size = int(np.prod(shape)) // layers
        share = size // world
        for l in range(layers):
            at = offset // world + l * share
            out += [shares[r][at: at + share] for r in range(world)]
        offset += layers * size
    return np.concatenate(out)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_llm_c_shares_are_train_gpt2_cu_s(world):
    shapes = param_shapes(CFG)
    n = num_parameters(CFG)
    full = np.arange(n, dtype=np.float64)
    shares = [np.concatenate([full[lo:hi] for lo, hi in llm_c_shard_pieces(shapes, world, r)]) for r in range(world)]
    assert all(len(s) == n // world for s in shares)
    np.testing.assert_array_equal(llm_c_assemble(shares, shapes), full)


def test_llm_c_has_no_shares_where_a_layer_does_not_split_evenly():
    assert llm_c_shard_pieces(param_shapes(CFG), 5, 0) is None  # C = 36
    assert llm_c_shard_pieces(param_shapes(CFG), 8, 0) is None  # a layer's ln1w: 36 elements


# ----------------------------------------------------------------------------- data split

def test_ranks_read_llmc_slices_disjointly(tmp_path):
    tokens = np.arange(1000) % 50000
    write_shard(tmp_path / "d.bin", tokens)
    B, T, N = 2, 8, 3
    loaders = [DataLoader(str(tmp_path / "d.bin"), B, T, r, N, shuffle=False) for r in range(N)]
    samples = (2 * len(tokens) - 2) // (2 * N * B * T)
    assert all(ld.shard_samples == samples for ld in loaders)
    read = np.zeros(len(tokens), dtype=np.int64)
    for idx in range(samples):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch()
            start = idx * N * B * T + r * B * T  # llm.c's dataloader_load_batch
            np.testing.assert_array_equal(x.ravel(), tokens[start: start + B * T])
            np.testing.assert_array_equal(y.ravel(), tokens[start + 1: start + B * T + 1])
            read[start: start + B * T] += 1
    assert read.max() == 1 and read.sum() == samples * N * B * T


# ----------------------------------------------------------------------------- per-rank state files

def test_rank_state_files_assemble_the_full_state(tmp_path):
    n, world = 1001, 2
    rng = np.random.default_rng(0)
    full = {k: rng.standard_normal(n).astype(np.float32) for k in ("m", "v", "master")}
    loader = {"shard": 0, "sample": 3}
    for r in range(world):
        s = zero_shard(n, world, r)
        part = {k: np.pad(a, (0, s.padded - n))[s.start: s.stop] for k, a in full.items()}
        checkpoint.write_state(checkpoint.state_path(tmp_path, 5, r),
                               checkpoint.TrainState(5, part["m"], part["v"], part["master"], loader,
                                                     [OutlierDetector(), OutlierDetector()], world, r))
    states = [checkpoint.read_state(checkpoint.state_path(tmp_path, 5, r), zero_shard(n, world, r).size)
              for r in range(world)]
    assert [(s.num_processes, s.rank, s.step) for s in states] == [(2, 0, 5), (2, 1, 5)]
    for k, a in full.items():
        np.testing.assert_array_equal(np.concatenate([getattr(s, k) for s in states])[:n], a)


# ----------------------------------------------------------------------------- the unique-id exchange

def _fs_rank(rank: int, directory: str, payload: bytes | None, results) -> None:
    results.put((rank, exchange_fs(payload, rank, directory, timeout=20)))


def _tcp_rank(rank: int, world: int, port: int, payload: bytes | None, results) -> None:
    results.put((rank, exchange_tcp(payload, rank, world, "127.0.0.1", port, timeout=20)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["fs", "tcp"])
def test_unique_id_reaches_every_rank(method, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    payload, world = bytes(range(128)), 3
    results = ctx.Queue()
    port = _free_port()
    procs = []
    for rank in reversed(range(world)):  # the others start first: they must wait for rank 0
        pay = payload if rank == 0 else None
        args = (rank, str(tmp_path), pay, results) if method == "fs" else (rank, world, port, pay, results)
        procs.append(ctx.Process(target=_fs_rank if method == "fs" else _tcp_rank, args=args))
        procs[-1].start()
    got = dict(results.get(timeout=60) for _ in range(world))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert got == {r: payload for r in range(world)}


def test_unique_id_bytes_round_trip():
    uid = tuple(((i * 37) % 256) - 128 for i in range(128))  # every sign, as C chars
    assert id_to_bytes(uid) == bytes((c & 0xFF) for c in uid) and len(id_to_bytes(uid)) == 128
    assert id_from_bytes(id_to_bytes(uid)) == uid
    with pytest.raises(LlmcError, match="has 3 bytes"):
        id_from_bytes(b"abc")


def test_unique_id_exchange_times_out_clearly(tmp_path):
    with pytest.raises(LlmcError, match="-pi fs: rank 0 wrote no"):
        exchange_fs(None, 1, str(tmp_path), timeout=0.2)
    with pytest.raises(LlmcError, match="-pi tcp: no rank 0 listening"):
        exchange_tcp(None, 1, 2, "127.0.0.1", _free_port(), timeout=0.3)
    with pytest.raises(LlmcError, match="-pi tcp: not every rank connected"):
        exchange_tcp(b"x", 0, 2, "127.0.0.1", _free_port(), timeout=0.3)


# ----------------------------------------------------------------------------- the trainer as 2 ranks

class ThreadGroup(SingleProcess):
    """NCCL's collectives over ranks that are threads of this process (NumPy arrays, the CPU backend)."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared = rank, world, shared

    def _gather(self, value) -> list:
        slots, wait = self.shared["slots"], self.shared["barrier"].wait
        slots[self.rank] = np.array(value, copy=True)
        wait()
        values = list(slots)
        wait()  # everyone has read before the next collective overwrites
        return values

    def all_reduce_mean(self, buf) -> None:
        buf[...] = sum(self._gather(buf)) / self.world

    def all_reduce_sum(self, buf) -> None:
        buf[...] = sum(self._gather(buf))

    def reduce_scatter_mean(self, buf) -> None:
        k = buf.size // self.world
        mine = slice(self.rank * k, (self.rank + 1) * k)
        buf[mine] = sum(v[mine] for v in self._gather(buf)) / self.world

    def all_gather(self, buf) -> None:
        k = buf.size // self.world
        for r, v in enumerate(self._gather(buf)):
            buf[r * k: (r + 1) * k] = v[r * k: (r + 1) * k]

    def host_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        stacked = np.stack(self._gather(np.asarray(values, dtype=np.float64)))
        return (stacked.sum(0) if op == "sum" else stacked.max(0)).tolist()

    def barrier(self) -> None:
        self.shared["barrier"].wait()

    def abort(self, reason: str) -> None:
        """ProcessGroup's exit with one line: the reason kept, and every wait in a collective broken."""
        self.shared.setdefault("aborts", []).append((self.rank, reason, time.monotonic()))
        self.shared["barrier"].abort()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_model_and_shards(tmp_path_factory.mktemp("data"), CFG, 3000, 1200, seed=1)


def config(data: Path, **kw) -> TrainConfig:
    # -a 1: one process of batch 2B reads exactly the tokens ranks 0 and 1 read with B (no shuffling)
    base = dict(model=str(data / "model.bin"), train_data=str(data / "train.bin"), val_data=str(data / "val.bin"),
                B=2, T=16, total_batch=128, max_steps=4, lr=1e-3, weight_decay=0.1, val_every=2, val_max_steps=2,
                sample_every=0, overfit_single_batch=1)
    return TrainConfig(**{**base, **kw})


def run_ranks(cfgs: list[TrainConfig]) -> tuple[list[Trainer], list[list[str]]]:
    """Train one Trainer per config, rank = position, each in its own thread; every rank's printed lines."""
    world = len(cfgs)
    shared = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=60)}
    trainers, lines, errors = [None] * world, [[] for _ in range(world)], []

    def rank(r: int) -> None:
        try:
            group = ThreadGroup(r, world, shared) if world > 1 else None
            trainers[r] = Trainer(cfgs[r], cpu, out=lines[r].append, stream=lambda text: None, group=group)
            trainers[r].run()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return trainers, lines


def numbers(lines: list[str]) -> list[float]:
    """Every loss, norm and val loss a run printed, in order."""
    out = []
    for line in lines:
        if line.startswith("step "):
            out += [float(line.split("loss ")[1].split()[0]), float(line.split("norm ")[1].split()[0])]
        elif line.startswith("val loss "):
            out.append(float(line.split()[2]))
    return out


@pytest.mark.parametrize("zero", [0, 1])
def test_two_ranks_train_as_one_process_with_the_same_total_batch(data, zero):
    (single,), (one_lines,) = run_ranks([config(data, B=4)])
    ranks, lines = run_ranks([config(data, num_processes=2, process_rank=r, zero_stage=zero) for r in range(2)])
    assert lines[1] == []  # rank 1 prints nothing
    want, got = numbers(one_lines), numbers(lines[0])
    assert len(want) == 4 * 2 + 3 and got == pytest.approx(want, rel=1e-5)
    for t in ranks:
        # AdamW turns summation-order noise in near-zero gradients into up to lr-sized steps: 4 steps of lr 1e-3
        np.testing.assert_allclose(t.model.params, single.model.params, rtol=1e-3, atol=1e-4)
    n = single.model.params.size
    sizes = [t.model.m.size for t in ranks]
    assert sizes == ([zero_shard(n, 2, 0).size] * 2 if zero else [n, n])  # -z 1: half the optimizer state each


def test_every_rank_stops_when_rank_0_cannot_take_the_output_dir(data, tmp_path):
    out = tmp_path / "out"
    holder = RunDir(str(out), rank=0)  # another run holds the folder
    try:
        # rank 0 names the holder, rank 1 says rank 0 could not take it; neither waits for the other
        with pytest.raises(LlmcError, match=f"-o {out} is in use by|rank 0 could not take the output dir -o {out}"):
            run_ranks([config(data, num_processes=2, process_rank=r, output_dir=str(out)) for r in range(2)])
    finally:
        holder.release()
    assert sorted(p.name for p in out.iterdir()) == [".llmc.lock"]  # nothing written by the refused ranks
    run_ranks([config(data, num_processes=2, process_rank=r, output_dir=str(out)) for r in range(2)])
    assert (out / "main.log").exists()  # free again once the holder is gone


class Vanished(Exception):
    pass


class Vanishing(ThreadGroup):
    """A rank whose process dies at its third step: it never arrives at that step's first collective."""

    def __init__(self, rank: int, world: int, shared: dict):
        super().__init__(rank, world, shared)
        self.calls = 0

    def host_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        self.calls += 1
        if self.calls == 3:
            raise Vanished
        return super().host_reduce(values, op)


def test_a_rank_that_vanishes_stops_the_other_within_its_timeout(data):
    shared = {"slots": [None, None], "barrier": threading.Barrier(2, timeout=120)}
    groups = [ThreadGroup(0, 2, shared), Vanishing(1, 2, shared)]
    outcome = {}

    def rank(r: int) -> None:
        cfg = config(data, num_processes=2, process_rank=r, max_steps=8, val_every=0, rank_timeout=1.0)
        try:
            Trainer(cfg, cpu, out=lambda line: None, stream=lambda text: None, group=groups[r]).run()
            outcome[r] = "finished"
        except BaseException as e:  # noqa: BLE001 - examined below
            outcome[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert isinstance(outcome[1], Vanished)
    assert isinstance(outcome[0], threading.BrokenBarrierError)  # rank 0 was let out of its wait by the abort
    (who, reason, when), = shared["aborts"]
    assert who == 0 and re.fullmatch(r"rank 0: no step completed in 1 s: another rank died or hangs "
                                     r"\(--rank-timeout\)", reason)
    assert when - start < 20  # not the barrier's own 120 s


def test_two_ranks_checkpoint_and_resume(data, tmp_path):
    def cfgs(world: int, out: Path, **kw) -> list[TrainConfig]:
        return [config(data, num_processes=world, process_rank=r, zero_stage=1, output_dir=str(out),
                       checkpoint_every=2, **kw) for r in range(world)]

    (single,), _ = run_ranks([config(data, B=4, output_dir=str(tmp_path / "one"), checkpoint_every=2, max_steps=2)])
    _, straight = run_ranks(cfgs(2, tmp_path / "straight", max_steps=4))
    run_ranks(cfgs(2, tmp_path / "cut", max_steps=2))
    out = tmp_path / "cut"
    assert sorted(p.name for p in out.iterdir() if p.name.endswith("00002") or "_00000002" in p.name) == [
        "DONE_00000002", "model_00000002.bin", "state_00000002_00000.bin", "state_00000002_00001.bin"]
    # the two files hold llm.c's shares of m and v: assembled as train_gpt2.cu lays them out, the single
    # process's state
    n, shapes = single.model.params.size, param_shapes(CFG)
    want = checkpoint.read_state(checkpoint.state_path(tmp_path / "one", 2), n)
    parts = [checkpoint.read_state(checkpoint.state_path(out, 2, r), n // 2) for r in range(2)]
    for k in ("m", "v"):
        full = getattr(want, k)  # equal up to fp32 summation order in the gradients
        np.testing.assert_allclose(llm_c_assemble([getattr(p, k) for p in parts], shapes), full,
                                   rtol=1e-3, atol=1e-3 * np.abs(full).max())
    # resuming with 2 ranks continues exactly; another number of processes is refused
    after_cut = numbers([ln for ln in straight[0] if not ln.startswith(("step    1", "step    2"))])[1:]
    _, resumed = run_ranks(cfgs(2, out, max_steps=4, resume=1))
    assert numbers(resumed[0]) == after_cut
    # an earlier llmc's files (trailer version 1: contiguous shards of the flat vector) resume the same
    old = tmp_path / "old"
    old.mkdir()
    for f in out.iterdir():
        if f.is_file() and not f.name.startswith("state_"):
            (old / f.name).write_bytes(f.read_bytes())
    whole_state = {k: llm_c_assemble([getattr(p, k) for p in parts], shapes) for k in ("m", "v")}
    for r, p in enumerate(parts):
        s = zero_shard(n, 2, r)
        m, v = (np.pad(whole_state[k], (0, s.padded - n))[s.start: s.stop] for k in ("m", "v"))
        path = checkpoint.state_path(old, 2, r)
        checkpoint.write_state(path, checkpoint.TrainState(2, m, v, None, p.loader, p.detectors, 2, r))
        raw = bytearray(path.read_bytes())
        version_at = len(raw) - 2 * checkpoint.DETECTOR_STRUCT.itemsize - 4
        raw[version_at: version_at + 4] = np.int32(checkpoint.CONTIGUOUS_SHARDS_VERSION).tobytes()
        path.write_bytes(bytes(raw))
    _, resumed_old = run_ranks(cfgs(2, old, max_steps=4, resume=1))
    assert numbers(resumed_old[0]) == after_cut
    with pytest.raises(LlmcError, match="resume with the same -z"):
        run_ranks([config(data, num_processes=2, process_rank=r, output_dir=str(out), checkpoint_every=2,
                          max_steps=4, resume=1, zero_stage=0) for r in range(2)])
    with pytest.raises(LlmcError, match="resume with the same -pn"):
        run_ranks([config(data, B=4, output_dir=str(out), checkpoint_every=2, max_steps=4, resume=1)])


# ----------------------------------------------------------------------------- train-gpu's multi-GPU flags

@pytest.mark.parametrize("flags,error", [
    (["-pn", "2", "-pr", "2", "-pi", "fs", "-pf", "/tmp"], "-pr 2 must be a rank in 0..1 of -pn 2"),
    (["-pn", "2", "-pr", "1", "-pi", "tcp"], "-pi tcp needs the server IP of rank 0: -ps IP"),
    (["-pn", "2", "-pr", "1", "-pi", "fs"], "-pi fs needs a directory all ranks share: -pf DIR"),
    (["-pn", "2", "-pi", "nccl"], "-pi takes mpi, tcp or fs, not 'nccl'"),
    (["-pn", "2", "-pr", "1", "-pg", "0", "-pm", "fs", "-pp", "/tmp"], "-pg takes the number of GPUs per node"),
    (["-z", "2"], "-z takes 0 or 1"),
])
def test_train_gpu_checks_its_multi_gpu_flags_first(flags, error):
    from click.testing import CliRunner

    from llmc.cli.main import main
    result = CliRunner().invoke(main, ["train-gpu", "-e", "d6", "-x", "1", *flags])
    assert result.exit_code == 1 and f"Error: {error}" in result.output, result.output

"""Checkpoints: llm.c's state layout, exact resume of the training loop, rotation, the NaN stop."""

import re
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llmc.core import checkpoint, cpu
from llmc.core.errors import LlmcError
from llmc.core.formats import read_model
from llmc.core.outliers import OutlierDetector
from llmc.core.rand import MT19937
from llmc.core.train import Trainer
from llmc.core.train_config import TrainConfig
from llmc.tests.core.training_data import CFG, write_training_data

# the CPU backend posing as one that queues its work: the loop then runs a step ahead of the read-back
AHEAD = SimpleNamespace(**{**{name: getattr(cpu, name) for name in cpu.__all__}, "asynchronous": True})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_training_data(tmp_path_factory.mktemp("data"))


def config(data, out, **kw) -> TrainConfig:
    base = dict(train_data=str(data / "train_*.bin"), val_data=str(data / "val.bin"), model=str(data / "model.bin"),
                output_dir=str(out), B=4, T=16, max_steps=20, val_every=10, val_max_steps=2, sample_every=0,
                lr=1e-3, weight_decay=0.1)
    return TrainConfig(**{**base, **kw})


def train(cfg: TrainConfig, stop_at: int | None = None, backend=cpu):
    """Run a Trainer; (per-step (loss, zloss, norm, zgrad, lr), trainer, printed lines). With stop_at,
    a SIGINT is simulated as step stop_at is read back, so the run checkpoints at the boundary it
    reaches next (stop_at; stop_at + 1 when the loop runs a step ahead) and stops."""
    lines: list[str] = []
    trainer = Trainer(cfg, backend, out=lines.append, stream=lambda s: None)
    results, finish = [], trainer.finish_step

    def recorded_finish(queued):
        results.append(finish(queued))
        if stop_at is not None and len(results) == stop_at:
            trainer.stop_signal = signal.SIGINT
        return results[-1]

    trainer.finish_step = recorded_finish
    trainer.run()
    return np.array(results), trainer, lines


@pytest.mark.parametrize("extra", [
    dict(max_steps=300, total_batch=128, skip_loss_z=1.0, skip_grad_z=1.0),  # accumulation; z-skips after 128 steps
    dict(max_steps=16, overfit_single_batch=1),  # unshuffled loader
    dict(max_steps=16, fp8=1),  # FP8 layers: their scales come from each step's own tensors
])
def test_resume_is_bit_exact(data, tmp_path, extra):
    n = extra["max_steps"]
    full, ref, _ = train(config(data, tmp_path / "full", **extra))
    first, _, _ = train(config(data, tmp_path / "split", checkpoint_every=7, **extra), stop_at=n // 2)
    assert checkpoint.find_latest(tmp_path / "split") == n // 2
    second, resumed, lines = train(config(data, tmp_path / "split", checkpoint_every=7, resume=1, **extra))
    assert f"resuming from the checkpoint of step {n // 2} in {tmp_path / 'split'}" in lines
    assert len(first) == len(second) == n // 2
    np.testing.assert_array_equal(np.concatenate([first, second]), full)  # NaN z-scores compare equal
    for name in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(resumed.model, name), getattr(ref.model, name))
    # the resumed run drops what the stopped run logged after its checkpoint: the logs match
    assert (tmp_path / "split" / "main.log").read_text() == (tmp_path / "full" / "main.log").read_text()
    if "skip_loss_z" in extra:  # the resumed run skips updates from its first steps: the windows were restored
        assert any(ln.startswith("skipping update") for ln in lines[:20])


def test_running_a_step_ahead_trains_and_prints_the_same(data, tmp_path):
    cfg = dict(max_steps=20, val_every=6, checkpoint_every=7, total_batch=128)
    results, trainer, lines = train(config(data, tmp_path / "sync", **cfg))
    ahead_results, ahead, ahead_lines = train(config(data, tmp_path / "ahead", **cfg), backend=AHEAD)
    np.testing.assert_array_equal(ahead_results, results)
    for name in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(ahead.model, name), getattr(trainer.model, name))
    untimed = lambda text: [re.sub(r"\| [0-9.]+ ms \|.*|time: .*", "", ln) for ln in text  # noqa: E731
                            if not ln.startswith(("| ", "+-"))]  # the closing table has timings too
    assert untimed(ahead_lines) == untimed(lines)  # step lines, val losses and checkpoints in the same order
    assert (tmp_path / "ahead" / "main.log").read_text() == (tmp_path / "sync" / "main.log").read_text()
    assert checkpoint.done_steps(tmp_path / "ahead") == [7, 14, 20]

    # a stop signal while step 10 is read back: step 11's update is queued already, so it stops at 11
    first, _, lines = train(config(data, tmp_path / "stopped", **cfg), stop_at=10, backend=AHEAD)
    assert "stopped by SIGINT at step 11; continue with -y 1 -o " + str(tmp_path / "stopped") in lines
    second, resumed, _ = train(config(data, tmp_path / "stopped", resume=1, **cfg), backend=AHEAD)
    np.testing.assert_array_equal(np.concatenate([first, second]), results)
    np.testing.assert_array_equal(resumed.model.params, trainer.model.params)


def test_checkpoint_files_and_rotation(data, tmp_path):
    out = tmp_path / "out"
    _, trainer, lines = train(config(data, out, max_steps=20, checkpoint_every=3, checkpoints_keep=2,
                                     major_checkpoint_every=6))
    # written at 3, 6, ..., 18 and the last step 20; the newest two plus every multiple of 6 remain
    assert checkpoint.done_steps(out) == [6, 12, 18, 20]
    assert "Deleting checkpoint at step 3" in lines and "Deleting checkpoint at step 15" in lines
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".llmc.lock", "config.json", "main.log", "metrics.csv"] + [f"{k}_{s:08d}{x}" for s in (6, 12, 18, 20) for k, x in
                        (("DONE", ""), ("model", ".bin"), ("state", "_00000.bin"))])
    cfg, params = read_model(checkpoint.model_path(out, 20))
    assert cfg == CFG
    np.testing.assert_array_equal(params, trainer.model.params)
    state = checkpoint.read_state(checkpoint.state_path(out, 20), params.size)
    np.testing.assert_array_equal(state.m, trainer.model.m)
    np.testing.assert_array_equal(state.v, trainer.model.v)
    assert state.step == 20 and state.master is None and state.detectors is not None


def test_state_file_is_llmc_layout(tmp_path):
    n = 10
    rng = MT19937(42)
    rng.randint32(1000)  # mid-block
    loader = {"shard": 2, "sample": 5, "shard_order": np.array([2, 0, 1]), "sample_order": np.arange(7)[::-1],
              "rng": rng.get_state()}
    det = OutlierDetector()
    for x in range(130):
        det.update(float(x % 7))
    s = checkpoint.TrainState(17, np.arange(n, dtype=np.float32), -np.arange(n, dtype=np.float32),
                              np.ones(n, np.float32), loader, [det, OutlierDetector()])
    path = tmp_path / "state.bin"
    checkpoint.write_state(path, s)
    raw = path.read_bytes()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(h[:6]) == [20240527, 1, 1, 0, 1, 1] and h[10] == 17
    u64 = np.frombuffer(raw[:1024], dtype="<u8")
    assert (u64[10], u64[11], u64[15], u64[16]) == (13371337, 13371337, 2, 5)
    body = 1024 + 3 * 4 * n
    assert np.frombuffer(raw[1024:body], "<f4")[n:2 * n].tolist() == (-np.arange(n)).tolist()
    assert np.frombuffer(raw[body: body + 8], "<u8")[0] == 3
    assert np.frombuffer(raw[body + 8: body + 20], "<i4").tolist() == [2, 0, 1]
    assert np.frombuffer(raw[body + 20: body + 28], "<u8")[0] == 7
    mt_at = body + 28 + 4 * 7
    assert len(raw) == mt_at + 2520 + 8 + 2 * 1048  # mt19937_state, trailer tag, two OutlierDetectors

    # llm.c's randint32 on the stored mt19937_state continues our stream
    mt = np.frombuffer(raw[mt_at: mt_at + 2520], dtype=checkpoint.MT_STRUCT)[0]
    assert list(llmc_randint32(mt, 700)) == list(rng.randint32(700))

    back = checkpoint.read_state(path, n)
    assert back.step == 17 and back.loader["shard"] == 2 and back.loader["sample"] == 5
    np.testing.assert_array_equal(back.master, s.master)
    np.testing.assert_array_equal(back.loader["sample_order"], loader["sample_order"])
    restored = MT19937(0)
    restored.set_state(back.loader["rng"])
    rng.set_state(loader["rng"])
    assert list(restored.randint32(1300)) == list(rng.randint32(1300))
    # the detectors continue bit-exactly (sums as saved, not re-added)
    for value in (3.0, 100.0, 2.5):
        assert back.detectors[0].update(value) == det.update(value)


def llmc_randint32(s, count: int) -> list[int]:
    """llm.c's rand.h randint32 (PyTorch's mt19937) on an mt19937_state struct, in plain Python."""
    state, left, nxt = [int(x) for x in s["state"]], int(s["left"]), int(s["next"])
    a = [int(x) for x in s["matrix_a"]]
    out = []
    for _ in range(count):
        left -= 1
        if left <= 0:
            left, nxt = 624, 0
            for j in range(624):
                y = (state[j] & 0x80000000) | (state[(j + 1) % 624] & 0x7FFFFFFF)
                state[j] = state[(j + 397) % 624] ^ (y >> 1) ^ a[y & 1]
        y = state[nxt]
        nxt += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append(y)
    return out


def test_fresh_seeded_llmc_state_reads_as_untwisted():
    """llm.c's state right after manual_seed (left 1, next 0) draws what NumPy's freshly seeded one does."""
    s = checkpoint.mt_to_llmc(MT19937(42).get_state(), 42)
    s["next"] = 0  # as manual_seed leaves it; left is 1
    assert int(s["left"]) == 1
    restored = MT19937(0)
    restored.set_state(checkpoint.mt_from_llmc(s))
    assert list(restored.randint32(5)) == list(MT19937(42).randint32(5)) == llmc_randint32(s, 5)


def test_state_reader_rejects_bad_files(tmp_path):
    s = checkpoint.TrainState(3, np.zeros(8, np.float32), np.zeros(8, np.float32), None, {"shard": 0, "sample": 1},
                              None)
    path = tmp_path / "state.bin"
    checkpoint.write_state(path, s)
    assert checkpoint.read_state(path, 8).detectors is None  # as llm.c writes it
    with pytest.raises(LlmcError, match="truncated"):
        checkpoint.read_state(path, 9)
    with pytest.raises(LlmcError, match="unexpected bytes"):
        checkpoint.read_state(path, 7)
    raw = bytearray(path.read_bytes())
    raw[4] = 2
    path.write_bytes(bytes(raw))
    with pytest.raises(LlmcError, match="version"):
        checkpoint.read_state(path, 8)


def test_latest_ignores_incomplete_checkpoints(tmp_path):
    for step in (5, 10):
        for p in (checkpoint.model_path(tmp_path, step), checkpoint.state_path(tmp_path, step)):
            p.write_bytes(b"x")
    checkpoint.done_path(tmp_path, 5).touch()
    checkpoint.model_path(tmp_path, 15).write_bytes(b"x")  # written, state and DONE not yet
    checkpoint.done_path(tmp_path, 20).touch()  # files gone (an interrupted llm.c deletion)
    assert checkpoint.find_latest(tmp_path) == 5


def test_prune_sweeps_orphans_of_interrupted_deletions(tmp_path):
    def files(step, done=True):
        for p in (checkpoint.model_path(tmp_path, step), checkpoint.state_path(tmp_path, step)):
            p.write_bytes(b"x")
        if done:
            checkpoint.done_path(tmp_path, step).touch()
    for step in (2, 4, 6, 8):
        files(step)
    files(3, done=False)  # a deletion killed after removing DONE
    files(9, done=False)  # newer than the newest checkpoint: being written, or to be overwritten on resume
    assert checkpoint.prune_checkpoints(tmp_path, keep=2, major_every=4) == [2]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{k}_{s:08d}{x}" for s in (4, 6, 8, 9) for k, x in
                           (("DONE", ""), ("model", ".bin"), ("state", "_00000.bin")) if (s, k) != (9, "DONE"))


@pytest.mark.parametrize("backend", [cpu, AHEAD])
def test_non_finite_loss_stops_with_last_good_checkpoint(data, tmp_path, backend):
    out = tmp_path / "out"
    with pytest.raises(LlmcError, match=r"step 2: stopped before the update; the checkpoint of step 1"):
        train(config(data, out, lr=1e30), backend=backend)  # the first update blows the weights up
    assert checkpoint.find_latest(out) == 1
    _, params = read_model(checkpoint.model_path(out, 1))
    assert np.isfinite(params).all()
    state = checkpoint.read_state(checkpoint.state_path(out, 1), params.size)
    assert np.isfinite(state.m).all() and np.isfinite(state.v).all()
    assert state.loader["sample"] == 1  # the failed step's batch is read again on resume


def test_resume_refuses_other_batch_layout(data, tmp_path):
    out = tmp_path / "out"
    train(config(data, out, checkpoint_every=5, max_steps=5))
    with pytest.raises(LlmcError, match="same -b, -t"):
        Trainer(config(data, out, B=2, T=16, resume=1), cpu, out=lambda s: None)
    with pytest.raises(LlmcError, match=r"already holds a run \(checkpoints up to step 5\)"):
        Trainer(config(data, out, checkpoint_every=5), cpu, out=lambda s: None)

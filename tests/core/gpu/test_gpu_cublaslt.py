"""cuBLASLt plans (core/gpu/cublaslt.py): the algorithm timed among the heuristic's candidates and their
neighbours, kept on disk and taken from there by the next plan of the same shape."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core.gpu import cublaslt, tuning_cache  # noqa: E402

pytestmark = pytest.mark.gpu

M, N, K = 2048, 1024, 1024  # above TUNE_MIN_FLOP: timed


@pytest.fixture
def plans(tmp_path, monkeypatch) -> list:
    """The plans gemm uses, recorded; the disk cache in a fresh folder; no plan kept between tests."""
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    cublaslt._plan.cache_clear()
    used, plan = [], cublaslt._plan

    def recording(key):
        used.append(plan(key))
        return used[-1]
    recording.cache_clear = plan.cache_clear  # as a new process would start
    monkeypatch.setattr(cublaslt, "_plan", recording)
    yield used
    plan.cache_clear()


def _product(rng):
    """out = a @ b.T through gemm, and the fp32 reference."""
    a, b = rand(rng, M, K), rand(rng, N, K, scale=0.05)
    da, db = dev(a), dev(b)
    out = cp.empty((M, N), gpu.act_dtype)

    def run():
        cublaslt.gemm(out.data.ptr, da.data.ptr, db.data.ptr, M, N, K, lda=K, ldb=K, ldd=N, trans_b=True)
        return host(out)
    return run, a @ b.T


def test_tuned_algorithm_is_kept_on_disk_and_reused(plans, rng, monkeypatch):
    run, want = _product(rng)
    first = run()
    assert_close(first, want, 1e-2, "tuned gemm")
    assert tuning_cache._read_cache() == {repr(plans[-1].key): list(cublaslt._config(plans[-1].chosen))}

    cublaslt._plan.cache_clear()  # a new process's plan: no timing, the same algorithm, the same bits
    monkeypatch.setattr(cublaslt._Plan, "_tune", lambda *a: pytest.fail("timed again despite the cache"))
    assert np.array_equal(run(), first)
    assert plans[-1] is not plans[0] and cublaslt._config(plans[-1].chosen) == cublaslt._config(plans[0].chosen)


@pytest.mark.parametrize("content", [
    "{not json", "[1, 2]", '{"DEVICE": [1]}', '{"DEVICE": {"KEY": "x"}}', '{"DEVICE": {"KEY": [66, 1]}}',
    '{"DEVICE": {"KEY": [999999, 0, 0, 1, 0, 0, 0, 0, 0]}}', '{"DEVICE": {"KEY": [66, -5, 0, 1, 0, 0, 0, 0, 0]}}'])
def test_unreadable_or_stale_cache_is_timed_again(plans, rng, content):
    run, want = _product(rng)
    run()
    key = plans[-1].key
    tuning_cache._cache_file().write_text(content.replace("DEVICE", tuning_cache._device_tag()).replace("KEY", repr(key)))
    cublaslt._plan.cache_clear()
    assert_close(run(), want, 1e-2, "gemm after a bad cache")
    assert cublaslt._cached_config(key) == cublaslt._config(plans[-1].chosen)


def test_neighbours_are_new_valid_configurations(plans, rng):
    run, _ = _product(rng)
    run()
    plan = plans[-1]
    heuristic = {cublaslt._config(a) for a in plan.candidates}
    neighbours = plan._neighbours()
    configs = {cublaslt._config(a) for a in neighbours}
    assert len(configs) == len(neighbours) and not heuristic & configs
    assert all(plan._valid(a) for a in neighbours)


def test_first_run_note_until_something_is_tuned(plans, rng, tmp_path):
    """A cache with nothing for this GPU: train-gpu's first step will tune, and the note says so and where
    the results go; once a shape is tuned and kept, no note."""
    note = gpu.first_run_note()
    assert note and gpu.device_name() in note and str(tmp_path) in note
    run, _ = _product(rng)
    run()
    assert gpu.first_run_note() is None

"""The GELU GEMM (core/gpu/gelu_gemm.py): cuDNN's fused kernel and cuBLASLt's epilogue both match the
CPU; the faster of them is timed once per shape, kept on disk and taken from there without timing."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, cpu, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core.gpu import cudnn as gpu_cudnn, gelu_gemm, tuning_cache  # noqa: E402

pytestmark = pytest.mark.gpu

N, C, OC = 512, 128, 512  # rows, channels in, channels out
KEY = gelu_gemm._Key(N, C, OC)
BF16_REL = 1e-2


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty disk cache and no choice made yet, as a new process on a new machine."""
    monkeypatch.setenv("LLMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gelu_gemm, "_chosen", {})


@pytest.fixture
def product(rng):
    """Runs matmul_forward with the GELU on fixed operands: (out, pre) on the host, and the CPU's."""
    x, w, b = rand(rng, N, C), rand(rng, OC, C, scale=0.1), rand(rng, OC)
    dx, dw, db = dev(x), dev(w), dev(b)
    want, want_pre = np.empty((N, OC), np.float32), np.empty((N, OC), np.float32)
    cpu.matmul_forward(want, x, w, b, pre_gelu=want_pre)

    def run():
        out, pre = cp.empty((N, OC), gpu.act_dtype), cp.empty((N, OC), gpu.act_dtype)
        gpu.matmul_forward(out, dx, dw, db, pre_gelu=pre)
        return host(out), host(pre)
    return run, want, want_pre


def _gelu_entries() -> dict:
    return {k: v for k, v in tuning_cache._read_cache().items() if k.startswith("gelu_gemm ")}


def test_cudnn_and_cublaslt_both_match_the_cpu(fresh, product, monkeypatch):
    if gpu_cudnn.module() is None:
        pytest.skip("cuDNN frontend not installed")
    run, want, want_pre = product
    plans = gelu_gemm._Graph(KEY).names
    assert plans, "cuDNN offers no plan for the GELU GEMM"
    for choice in (gelu_gemm.CUBLASLT, plans[0]):
        monkeypatch.setattr(gelu_gemm, "cached", lambda key, choice=choice: [choice])
        gelu_gemm._chosen.clear()
        out, pre = run()
        graph = gelu_gemm._chosen[KEY]
        assert (graph is None) == (choice == gelu_gemm.CUBLASLT), f"{choice} was not the path taken"
        assert graph is None or graph.names[graph.index] == choice
        assert_close(out, want, BF16_REL, f"{choice} out")
        assert_close(pre, want_pre, BF16_REL, f"{choice} pre_gelu")


def test_choice_is_timed_once_kept_on_disk_and_reused(fresh, product, monkeypatch):
    run, want, _ = product
    first, first_pre = run()
    assert_close(first, want, BF16_REL, "out")
    entries = _gelu_entries()
    if gpu_cudnn.module() is None:
        assert not entries and gelu_gemm._chosen[KEY] is None
        return
    (choice,), = entries.values()
    assert choice == gelu_gemm.CUBLASLT or choice in gelu_gemm._Graph(KEY).names

    gelu_gemm._chosen.clear()  # a new process: no timing, the same kernel, the same bits
    monkeypatch.setattr(gelu_gemm, "time_ms", lambda *a: pytest.fail("timed again despite the cache"))
    again, again_pre = run()
    assert np.array_equal(again, first) and np.array_equal(again_pre, first_pre)


@pytest.mark.parametrize("content", ['{"DEVICE": {"KEY": "x"}}', '{"DEVICE": {"KEY": ["no such plan"]}}',
                                     '{"DEVICE": {"KEY": [1, 2]}}'])
def test_unusable_cached_choice_is_timed_again(fresh, product, content):
    if gpu_cudnn.module() is None:
        pytest.skip("cuDNN frontend not installed")
    run, want, _ = product
    run()
    (key,) = _gelu_entries()
    tuning_cache._cache_file().write_text(content.replace("DEVICE", tuning_cache._device_tag()).replace("KEY", key))
    gelu_gemm._chosen.clear()
    assert_close(run()[0], want, BF16_REL, "out after a bad cache")
    (choice,), = _gelu_entries().values()
    assert choice == gelu_gemm.CUBLASLT or choice in gelu_gemm._Graph(KEY).names


def test_without_cudnn_cublaslt_runs(fresh, product, monkeypatch):
    monkeypatch.setattr(gpu_cudnn, "module", lambda: None)
    run, want, want_pre = product
    out, pre = run()
    assert gelu_gemm._chosen[KEY] is None and not _gelu_entries()
    assert_close(out, want, BF16_REL, "out")
    assert_close(pre, want_pre, BF16_REL, "pre_gelu")

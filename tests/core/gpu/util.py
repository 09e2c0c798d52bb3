"""Shared by the GPU backend tests: importing it skips the importing test module cleanly without
CuPy or a GPU. Inputs are rounded to bf16 so the CPU reference (llmc.core.cpu, fp32) and the GPU
see the very same values."""

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    _devices = cp.cuda.runtime.getDeviceCount()
except Exception:  # CUDA driver or runtime missing
    _devices = 0
if _devices == 0:
    pytest.skip("no CUDA GPU", allow_module_level=True)

from llmc.core import cpu, gpu  # noqa: E402

gpu.runtime.init()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """fp32 values exactly representable in bf16."""
    return (rng.standard_normal(shape) * scale).astype(gpu.act_dtype).astype(np.float32)


def dev(x: np.ndarray):
    """To the GPU as bf16 (float input) or unchanged (integers)."""
    return gpu.to_device(x, gpu.act_dtype if x.dtype.kind == "f" else None)


def host(a) -> np.ndarray:
    return gpu.to_host(a)


def assert_close(got: np.ndarray, want: np.ndarray, rel: float, what: str = "") -> None:
    """Relative error ||got - want|| / ||want|| below rel, and no NaN: the bf16 check."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    err = np.linalg.norm((got - want).ravel()) / max(np.linalg.norm(want.ravel()), 1e-30)
    assert err < rel, f"{what}: relative error {err:.2e} >= {rel:.0e}"


def graph_steps(model, steps: int) -> tuple[list[float], dict]:
    """`steps` AdamW steps (lr 1e-3, clipped to norm 1) of a model holding a batch, its forward/backward as
    the backend's graph; (the losses, the first step's gradients on the host)."""
    from llmc.core.primitives import AdamW

    B, T = model.B, model.T
    step = model.backend.graph(lambda: (model.forward(dloss=1.0 / (B * T)), model.backward()))
    losses, first_grads = [], None
    for i in range(steps):
        model.zero_grad()
        step()
        losses.append(model.mean_loss())
        if first_grads is None:
            first_grads = {k: model.backend.to_host(v) for k, v in model.g.items()}
        model.compute_grad_norm()
        norm = model.grad_norm()
        model.update(AdamW(lr=1e-3), step=i + 1, grad_scale=1.0 / max(norm, 1.0), seed=i)
    return losses, first_grads

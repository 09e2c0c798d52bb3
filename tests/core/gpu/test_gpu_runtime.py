"""Side work (core/gpu/runtime.py): memory-bound kernels queued beside the stream, and the stream
waiting for exactly the pieces it would race with."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core.gpu import runtime  # noqa: E402

pytestmark = pytest.mark.gpu


def _nothing(on) -> None:
    pass


def test_settle_waits_for_the_conflicting_pieces_only():
    a, b, w = (cp.zeros(1024, gpu.act_dtype) for _ in range(3))
    runtime.beside(_nothing, reads=(a,), writes=(w,))
    runtime.beside(_nothing, reads=(b,), writes=())
    runtime.settle(reads=(a,), writes=(cp.zeros(8, gpu.act_dtype),))  # reading what side work reads is fine
    assert len(runtime._side_work) == 2
    runtime.settle(writes=(a[:8],))  # overwriting what the first piece reads waits for it
    assert len(runtime._side_work) == 1
    runtime.settle(reads=(w[512:],))  # nothing pending writes w any more
    assert len(runtime._side_work) == 1
    runtime.settle(writes=(b[1000:],))
    assert not runtime._side_work


def test_other_primitives_and_read_backs_wait_for_all_side_work(rng):
    x = dev(rand(rng, 4, 64))
    runtime.beside(_nothing, reads=(x,), writes=())
    gpu.gelu_forward(cp.empty_like(x), x)
    assert not runtime._side_work
    runtime.beside(_nothing, reads=(x,), writes=())
    host(x)
    assert not runtime._side_work


def _busy(on) -> None:
    """~40 ms of side work ahead of the next piece."""
    with on:
        x = cp.ones(1 << 26, cp.float32)
        for _ in range(200):
            cp.sin(x, out=x)


def test_bias_gradient_reads_dout_before_layernorm_backward_adds_to_it(rng):
    """The model's order: the bias gradient (beside, here queued behind other side work) sums the
    gradient that the next layernorm backward accumulates into, which must wait for it."""
    N, C = 4096, 256
    dout, residual, inp, w = rand(rng, N, C), rand(rng, N, C), rand(rng, N, C), rand(rng, C, C, scale=0.05)
    ln_w = rand(rng, C)
    mean, rstd = residual.mean(-1), 1 / np.sqrt(residual.var(-1) + 1e-5)
    d_dout, dbias = dev(dout), cp.zeros(C, gpu.act_dtype)
    dinp, dw, dln_w, dln_b = (cp.zeros(shape, gpu.act_dtype) for shape in ((N, C), (C, C), C, C))
    runtime.beside(_busy, reads=(), writes=())
    gpu.matmul_backward(dinp, dw, dbias, d_dout, dev(inp), dev(w))
    gpu.layernorm_backward(d_dout, dln_w, dln_b, dinp, dev(residual), dev(ln_w),
                           gpu.to_device(mean, np.float32), gpu.to_device(rstd, np.float32))
    assert_close(host(dbias), dout.sum(0), 2e-2, "the bias gradient of dout before layernorm backward")

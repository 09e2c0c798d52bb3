"""CUDA-graph capture of a chain of primitives (cuBLASLt, cuDNN, kernels, a CuPy fill): replays
compute what eager calls compute, read the buffers' current contents, and allocate nothing."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, dev, gpu, host, rand, rng  # noqa: E402,F401

pytestmark = pytest.mark.gpu


def test_graph_replay_matches_eager(rng):
    B, T, C, NH, V, Vp = 2, 64, 128, 2, 500, 512
    bf = gpu.act_dtype
    x = cp.empty((B, T, C), bf)
    w = {name: dev(rand(rng, *shape, scale=0.1)) for name, shape in
         (("ln_w", (C,)), ("ln_b", (C,)), ("qkvw", (3 * C, C)), ("qkvb", (3 * C,)), ("wte", (Vp, C)))}
    targets = cp.asarray(rng.integers(0, V, (B, T)).astype(np.int32))
    ln, mean, rstd = cp.empty((B, T, C), bf), cp.empty((B, T), cp.float32), cp.empty((B, T), cp.float32)
    qkv, att, stats = cp.empty((B, T, 3 * C), bf), cp.empty((B, T, C), bf), cp.empty((B, NH, T), cp.float32)
    logits, losses = cp.empty((B, T, Vp), bf), cp.empty((B, T), cp.float32)
    datt, dqkv, dwte, dln = cp.empty((B, T, C), bf), cp.empty((B, T, 3 * C), bf), cp.empty((Vp, C), bf), \
        cp.empty((B, T, C), bf)
    dqkvw, dqkvb = cp.empty((3 * C, C), bf), cp.empty(3 * C, bf)

    def step() -> None:
        dwte.fill(0)
        dqkvw.fill(0)
        dqkvb.fill(0)
        gpu.layernorm_forward(ln, mean, rstd, x, w["ln_w"], w["ln_b"])
        gpu.matmul_forward(qkv, ln, w["qkvw"], w["qkvb"])
        gpu.attention_forward(att, stats, qkv, NH)
        gpu.matmul_forward(logits, att, w["wte"], None)
        gpu.softmax_crossentropy(losses, logits, targets, V, 1.0 / (B * T))
        gpu.matmul_backward(datt, dwte, None, logits, att, w["wte"])
        gpu.attention_backward(dqkv, datt, qkv, att, stats, NH)
        gpu.matmul_backward(dln, dqkvw, dqkvb, dqkv, ln, w["qkvw"])

    outputs = (losses, dwte, dqkvw, dqkvb, dln)
    inputs = [rand(rng, B, T, C) for _ in range(4)]
    eager = []
    for xi in inputs:
        x[...] = dev(xi)
        step()
        eager.append([host(o) for o in outputs])

    replay = gpu.graph(step)
    pool = cp.get_default_memory_pool()
    used = []
    for i, xi in enumerate(inputs):  # call 1 eager, call 2 captures and launches, then replays
        x[...] = dev(xi)
        replay()
        gpu.synchronize()
        used.append(pool.used_bytes())
        for got, want, what in zip((host(o) for o in outputs), eager[i], ("loss", "dwte", "dqkvw", "dqkvb", "dln")):
            assert_close(got, want, 1e-3, f"call {i + 1}: {what}")
    assert used[2] == used[3], "a replay allocated memory"
    assert not np.allclose(eager[2][0], eager[3][0])  # the inputs did change the losses

"""`llmc test`: a backend against a reference debug state, as llm.c's test_gpt2.c / test_gpt2.cu.

Step 0: logits (first V of Vp), loss and every parameter gradient against the state. Then N AdamW
steps on the state's batch with test_gpt2.c's hyperparameters, each loss against the state's loss
trailer (or llm.c's published GPT-2 124M losses when the state has none).
"""

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np

from llmc.core.config import GPTConfig, param_shapes
from llmc.core.formats import read_debug_state, read_model
from llmc.core.flat_model import views
from llmc.core.model import GPT
from llmc.core.primitives import AdamW

# test_gpt2.c's optimizer (no gradient clipping)
TEST_ADAMW = AdamW(lr=1e-4, weight_decay=0.01, beta2=0.999)
# test_gpt2.c's expected losses for GPT-2 124M on its debug state
GPT2_124M_LOSSES = (5.270007133483887, 4.059706687927246, 3.3751230239868164, 2.8007826805114746,
                    2.315382242202759, 1.8490285873413086, 1.3946564197540283, 0.9991465210914612,
                    0.6240804195404053, 0.37651097774505615)
GPT2_124M = GPTConfig(1024, 50257, 50304, 12, 12, 768)


@dataclass(frozen=True)
class Tolerances:
    logits: float  # max |diff| per logit
    loss: float  # step-0 loss and each step's loss
    grad: dict[str, float]  # absolute per-element tolerance by tensor
    grad_rel: float = 0.0  # plus this fraction of |reference| (test_gpt2.cu's bf16 epsilon)


CPU_TOLERANCES = Tolerances(logits=1e-2, loss=1e-2, grad={name: 2e-2 for name in param_shapes(GPT2_124M)})
# test_gpt2.cu's thresholds for bf16, in parameter order
GPU_TOLERANCES = Tolerances(logits=25.0, loss=0.05, grad_rel=0.079, grad=dict(zip(
    param_shapes(GPT2_124M), (5e-1, 4e-3, 1e-1, 4e-2, 5e-2, 3.5e-2, 2e-2, 3e-2, 5e-2, 3e-2, 3e-2, 3e-2, 2e-2, 1e-2, 1e-1, 2e-2))))


def check(model_path: str, state_path: str, backend: ModuleType, tol: Tolerances, steps: int,
          out: Callable[[str], None] = print) -> bool:
    """Run the checks, printing as test_gpt2.c does; True if everything passed."""
    cfg, params = read_model(model_path)
    state = read_debug_state(state_path, cfg)
    B, T = state.inputs.shape
    V = cfg.vocab_size
    out(f"[GPT-2] max_seq_len {cfg.max_seq_len} vocab {V} (padded {cfg.padded_vocab_size}) layers {cfg.num_layers} "
        f"heads {cfg.num_heads} channels {cfg.channels}; batch B={B} T={T}; device {backend.name}")
    model = GPT(cfg, backend, params, B, T)
    model.set_batch(state.inputs, state.targets)
    ok = True

    model.forward()  # plain forward: logits stay logits
    logits = backend.to_host(model.acts["logits"])[..., :V]
    diff = float(np.abs(logits - state.logits).max())
    logits_ok = diff < tol.logits
    out(f"{'' if logits_ok else 'NOT '}OK (LOGITS), max diff {diff:.3e}")
    ok &= logits_ok

    if steps > 0 and state.ref_losses is not None:
        ref_losses, source = state.ref_losses.tolist(), "the state's loss trailer"
    elif steps > 0 and cfg == GPT2_124M:
        ref_losses, source = list(GPT2_124M_LOSSES), "llm.c's published GPT-2 124M losses"
    else:
        ref_losses, source = [], None
    if steps > len(ref_losses):
        out(f"note: only {len(ref_losses)} reference step losses available"
            + ("" if source else " (the state has no loss trailer and the model is not GPT-2 124M): "
               "only step 0 (logits, loss, gradients) is checked"))
        steps = len(ref_losses)
    elif source:
        out(f"step losses checked against {source}")

    for step in range(max(steps, 1)):
        t0 = time.perf_counter()
        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
        backend.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        loss = model.mean_loss()
        if step == 0:
            loss_ok = abs(loss - state.loss) < tol.loss
            out(f"{'' if loss_ok else 'NOT '}OK (LOSS) {loss:f} vs reference {state.loss:f}")
            ok &= loss_ok & _check_grads(model, state.grads, cfg, tol, out)
        if step < steps:
            step_ok = abs(loss - ref_losses[step]) < tol.loss
            ok &= step_ok
            out(f"step {step}: loss {loss:f} (took {ms:f} ms) OK = {int(step_ok)}")
            model.update(TEST_ADAMW, step=step + 1)
    out(f"overall okay: {int(ok)}")
    return ok


def _check_grads(model: GPT, ref: np.ndarray, cfg: GPTConfig, tol: Tolerances, out: Callable[[str], None]) -> bool:
    shapes = param_shapes(cfg)
    got = views(model.backend.to_host(model.grads), shapes)
    want = views(ref, shapes)
    ok = True
    for name in shapes:
        diff = np.abs(got[name] - want[name])
        bound = tol.grad[name] + tol.grad_rel * np.abs(want[name])
        tensor_ok = bool((diff <= bound).all())
        ok &= tensor_ok
        out(f"{'OK' if tensor_ok else 'NOT OK'} d{name:<9} max abs diff {float(diff.max()):.3e}")
    return ok

"""`llmc test`: a backend against a reference debug state, as llm.c's test_gpt2.c / test_gpt2.cu and
test_llama3.cu.

The model file's magic picks the family (core/families.load); CHECKS holds what the check needs of it
beyond the Family: its debug-state reader, tolerances per device and the optimizer its reference used.
Step 0: logits (first V of Vp), loss and every parameter gradient against the state. Then N AdamW steps on
the state's batch, each loss against the state's history (or llm.c's published GPT-2 124M losses when the
state has none), and each gradient norm too where the history has them (Llama 3's).
"""

import math
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

from llmc.core import families, formats, llama_formats
from llmc.core.config import GPTConfig, param_shapes
from llmc.core.errors import LlmcError
from llmc.core.flat_model import FlatModel, views
from llmc.core.llama_config import NAMED_SHAPES, param_shapes as llama_param_shapes
from llmc.core.primitives import AdamW

# test_gpt2.c's optimizer (no gradient clipping)
TEST_ADAMW = AdamW(lr=1e-4, weight_decay=0.01, beta2=0.999)
# test_llama3.cu's llama3_update(lr 1e-5, betas 0.9/0.95, eps 1e-8, no decay) after clipping to norm 1, as
# train_llama3.py's defaults that write the history (constant lr, clip_grad_norm_ 1.0)
LLAMA3_TEST_ADAMW = AdamW(lr=1e-5, weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8)
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
    grad_rel: float = 0.0  # plus this fraction of |reference| (llm.c's bf16 epsilon)
    norm_rel: float = 0.0  # each step's gradient norm, relative to the history's (states that have norms)
    grad_of_tensor: float = 0.0  # FP8: plus this fraction of the tensor's largest |reference|, and the
    #                              difference's norm within this fraction of the reference's


# FP8 (-f8 1) on either device. E4M3 rounds each forward operand by at most 2^-4 relative and E5M2 each
# gradient by 2^-3; a uniform rounding error's RMS is its bound over sqrt(3), and the L blocks' errors add
# in quadrature. Allowed: FP8_MARGIN times those: logits within FP8_MARGIN * 2^-4/sqrt(3) * sqrt(L) of the
# reference's largest |logit|; a gradient's difference within FP8_MARGIN * 2^-3/sqrt(3) * sqrt(L) of its
# tensor's norm, and each element within that of the tensor's largest |element|. (Measured with the CPU
# emulation on PyTorch states: 2 layers 3-9% of the norm, 4 layers 7-12%, against bounds of 15% and 22%.)
FP8_MARGIN = 1.5


def fp8_gradient_bound(num_layers: int) -> float:
    """The fraction of a gradient tensor's norm (and of its largest |element|, element by element) by which
    FP8 may move it in a model of num_layers blocks."""
    return FP8_MARGIN * 2 ** -3 / math.sqrt(3) * math.sqrt(num_layers)


def fp8_tolerances(base: Tolerances, num_layers: int, logits_scale: float) -> Tolerances:
    """The FP8 check's tolerances for a model of num_layers blocks whose reference logits reach logits_scale;
    losses and norms as the family's bf16 check (base)."""
    return Tolerances(logits=FP8_MARGIN * 2 ** -4 / math.sqrt(3) * math.sqrt(num_layers) * logits_scale,
                      loss=base.loss, grad=dict.fromkeys(base.grad, 0.0), norm_rel=max(base.norm_rel, 0.079),
                      grad_of_tensor=fp8_gradient_bound(num_layers))


@dataclass(frozen=True)
class FamilyCheck:
    """What `llmc test` needs of a family beyond its Family."""
    read_debug_state: Callable[[str, Any], formats.DebugState]  # (path, config) -> state
    tolerances: dict[str, Tolerances]  # by backend name
    adamw: AdamW
    clip_to: float | None  # global gradient norm clipped to before each update, as the reference did
    published_losses: tuple[tuple[Any, tuple[float, ...]], ...] = ()  # (config, step losses) for states without


GPT2_NAMES = tuple(param_shapes(GPT2_124M))
LLAMA3_NAMES = tuple(llama_param_shapes(NAMED_SHAPES["llama3.2-1b"]))
# test_llama3.cu's bf16 thresholds, in parameter order; the bias slots are zero on both sides
# (attprojb's threshold is test_llama3.cu's 0*3e-2)
LLAMA3_GPU_GRADS = (1e-1, 4e-3, 2e-2, 8e-3, 1e-1, 3.5e-2, 2e-2, 0.0, 2e-2, 2.5e-3, 5e-2, 5e-2, 1e-1, 1.5e-2, 1e-1, 2e-2)

CHECKS: dict[str, FamilyCheck] = {
    "gpt2": FamilyCheck(
        formats.read_debug_state, {
            # test_gpt2.c's
            "cpu": Tolerances(logits=1e-2, loss=1e-2, grad={name: 2e-2 for name in GPT2_NAMES}),
            # test_gpt2.cu's thresholds for bf16, in parameter order
            "gpu": Tolerances(logits=25.0, loss=0.05, grad_rel=0.079, grad=dict(zip(GPT2_NAMES, (
                5e-1, 4e-3, 1e-1, 4e-2, 5e-2, 3.5e-2, 2e-2, 3e-2, 5e-2, 3e-2, 3e-2, 3e-2, 2e-2, 1e-2, 1e-1, 2e-2))))},
        TEST_ADAMW, None, ((GPT2_124M, GPT2_124M_LOSSES),)),
    "llama3": FamilyCheck(
        llama_formats.read_debug_state, {
            # test_llama3.cu's ENABLE_FP32 build: logits 1e-3, losses 1e-5, gradients 1e-6 plus its 0.079
            # relative epsilon; it does not check the norms: 1e-4 relative, the losses' order in fp32
            "cpu": Tolerances(logits=1e-3, loss=1e-5, grad={name: 1e-6 for name in LLAMA3_NAMES}, grad_rel=0.079,
                              norm_rel=1e-4),
            # test_llama3.cu's bf16 build; the norms to its bf16 epsilon
            "gpu": Tolerances(logits=1.0, loss=0.05, grad=dict(zip(LLAMA3_NAMES, LLAMA3_GPU_GRADS)), grad_rel=0.079,
                              norm_rel=0.079)},
        LLAMA3_TEST_ADAMW, 1.0),
}


def check(model_path: str, state_path: str, backend: ModuleType, steps: int,
          out: Callable[[str], None] = print, fp8: bool = False) -> bool:
    """Run the checks, printing as test_gpt2.c / test_llama3.cu do; True if everything passed. fp8: the
    blocks' linear layers in FP8 (-f8 1), against fp8_tolerances."""
    if not model_path.endswith(".bin"):
        raise LlmcError(f"{model_path}: llmc test needs a model .bin file")
    family, cfg, params = families.load(model_path)
    spec = CHECKS[family.name]
    tol = spec.tolerances[backend.name]
    state = spec.read_debug_state(state_path, cfg)
    ref_norms = getattr(state, "ref_norms", None)  # only Llama 3's history records them
    B, T = state.inputs.shape
    V = cfg.vocab_size
    out(f"[{family.name}] " + ", ".join(f"{k} {v}" for k, v in family.describe(cfg))
        + f"; batch B={B} T={T}; device {backend.name}" + ("; FP8 linear layers" if fp8 else ""))
    if fp8:
        tol = fp8_tolerances(spec.tolerances["gpu"], cfg.num_layers, float(np.abs(state.logits).max()))
        out(f"FP8 tolerances: logits {tol.logits:.3e}, loss {tol.loss}, gradients {100 * tol.grad_of_tensor:.1f}% "
            f"of each tensor's norm and largest element")
    model = family.Model(cfg, backend, params, B, T, fp8=fp8)
    model.set_batch(state.inputs, state.targets)
    ok = True

    model.forward()  # plain forward: logits stay logits
    logits = backend.to_host(model.acts["logits"])[..., :V]
    diff = float(np.abs(logits - state.logits).max())
    logits_ok = diff < tol.logits
    out(f"{'' if logits_ok else 'NOT '}OK (LOGITS), max diff {diff:.3e}")
    ok &= logits_ok

    published = next((losses for c, losses in spec.published_losses if c == cfg), None)
    if steps > 0 and state.ref_losses is not None:
        ref_losses = state.ref_losses.tolist()
        source = "the state's loss trailer" if ref_norms is None else "the state's training history (losses, norms)"
    elif steps > 0 and published is not None:
        ref_losses, source = list(published), "llm.c's published losses for this model"
    else:
        ref_losses, source = [], None
    if steps > len(ref_losses):
        out(f"note: only {len(ref_losses)} reference step losses available"
            + ("" if source else " (the state has no loss trailer and llm.c publishes none for this model): "
               "only step 0 (logits, loss, gradients) is checked"))
        steps = len(ref_losses)
    elif source:
        out(f"step losses checked against {source}")

    for step in range(max(steps, 1)):
        t0 = time.perf_counter()
        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
        model.compute_grad_norm()  # what clipping reads, and the norm a history is checked against
        backend.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        loss = model.mean_loss()
        if step == 0:
            loss_ok = abs(loss - state.loss) < tol.loss
            out(f"{'' if loss_ok else 'NOT '}OK (LOSS) {loss:f} vs reference {state.loss:f}")
            ok &= loss_ok & _check_grads(model, state.grads, tol, out)
        if step < steps:
            step_ok = _check_step(model, step, loss, ms, ref_losses[step],
                                  None if ref_norms is None else float(ref_norms[step]), tol, out)
            ok &= step_ok
            model.update(spec.adamw, step=step + 1, clip_to=spec.clip_to)
    out(f"overall okay: {int(ok)}")
    return ok


def _check_step(model: FlatModel, step: int, loss: float, ms: float, ref_loss: float, ref_norm: float | None,
                tol: Tolerances, out: Callable[[str], None]) -> bool:
    """One step's loss (and gradient norm, where the history has it) against the reference's."""
    loss_ok = abs(loss - ref_loss) < tol.loss
    norm_text, norm_ok = "", True
    if ref_norm is not None:
        norm = model.grad_norm()
        norm_ok = abs(norm - ref_norm) <= tol.norm_rel * abs(ref_norm)
        norm_text = f" norm {norm:f}"
    out(f"step {step}: loss {loss:f}{norm_text} (took {ms:f} ms) OK = {int(loss_ok and norm_ok)}")
    if not loss_ok:
        out(f"LOSS MISMATCH AT STEP {step}: {loss:f} {ref_loss:f}")
    if not norm_ok:
        out(f"NORM MISMATCH AT STEP {step}: {norm:f} {ref_norm:f}")
    return loss_ok and norm_ok


def _check_grads(model: FlatModel, ref: np.ndarray, tol: Tolerances, out: Callable[[str], None]) -> bool:
    got = views(model.backend.to_host(model.grads), {name: p.shape for name, p in model.p.items()})
    want = views(ref, {name: p.shape for name, p in model.p.items()})
    ok = True
    for name in got:
        diff = np.abs(got[name] - want[name])
        scale = float(np.abs(want[name]).max(initial=0.0))
        bound = tol.grad[name] + tol.grad_rel * np.abs(want[name]) + tol.grad_of_tensor * scale
        tensor_ok = bool((diff <= bound).all())
        if tol.grad_of_tensor:
            tensor_ok &= bool(np.linalg.norm(diff) <= tol.grad_of_tensor * np.linalg.norm(want[name]))
        ok &= tensor_ok
        out(f"{'OK' if tensor_ok else 'NOT OK'} d{name:<9} max abs diff {float(diff.max()):.3e}")
    return ok

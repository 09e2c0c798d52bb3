"""The PyTorch reference GPT-2: llm.c's init, the flat <-> model mapping, the debug-state writer."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llmc.core.check import TEST_ADAMW  # noqa: E402
from llmc.core.config import DECAYED_PARAMS, GPTConfig, param_shapes  # noqa: E402
from llmc.core.formats import read_debug_state, read_model  # noqa: E402
from llmc.core.torch_gpt2 import (GPT2,  # noqa: E402
                                  init_params, make_debug_state, make_optimizer, write_reference)

# odd sizes on purpose: V not a multiple of 128, T not a power of two, 3 heads; V*C and maxT*C are not
# multiples of 16, so the init takes torch's "redraw the last 16" path
CFG = GPTConfig(max_seq_len=11, vocab_size=37, padded_vocab_size=128, num_layers=2, num_heads=3, channels=12)


def offsets(cfg: GPTConfig) -> dict[str, slice]:
    out, pos = {}, 0
    for name, shape in param_shapes(cfg).items():
        out[name] = slice(pos, pos + math.prod(shape))
        pos += math.prod(shape)
    return out


class TorchCompatibleNormal:
    """llm.c's rand.h (PyTorch's CPU normal_ for tensors of >= 16 floats) over the classic mt19937
    stream, which NumPy's legacy RandomState(seed) yields through full-range uint32 randint."""

    def __init__(self, seed: int):
        self.rs = np.random.RandomState(seed)

    def uniform(self, n: int) -> np.ndarray:
        raw = self.rs.randint(0, 2**32, size=n, dtype=np.uint64)
        return (raw & ((1 << 24) - 1)).astype(np.float32) * np.float32(2.0**-24)

    @staticmethod
    def fill16(u: np.ndarray, std: float) -> np.ndarray:  # Box-Muller on 8 + 8 uniforms
        radius = np.sqrt(np.float32(-2) * np.log(np.float32(1) - u[:8] + np.float32(1e-12)))
        theta = (2.0 * np.pi * u[8:].astype(np.float64)).astype(np.float32)
        return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)]) * np.float32(std)

    def normal(self, n: int, std: float) -> np.ndarray:
        assert n >= 16
        u = self.uniform(n)
        out = np.concatenate([self.fill16(u[i: i + 16], std) for i in range(0, n - 15, 16)] + [u[n - n % 16:]])
        if n % 16:
            out[n - 16:] = self.fill16(self.uniform(16), std)
        return out


def test_normal_reference_reproduces_llmc_rand_h_example():
    # the numbers printed in llm.c's rand.h header comment (seed 137; 5 randint32, then normal_(16))
    g = TorchCompatibleNormal(137)
    assert g.rs.randint(0, 2**32, size=5, dtype=np.uint64).tolist() == [4053805790, 2173880614, 380293709,
                                                                          1237255315, 2986595568]
    g.rs.randint(0, 2**32, size=4 * 4 + 1, dtype=np.uint64)  # normal_(8): 4 Box-Muller pairs of 2 doubles; 1 randint
    expected = [-1.2813878059387207, -2.646395683288574, -0.06569503247737885, 0.2180829495191574]
    np.testing.assert_allclose(g.normal(16, 1.0)[:4], expected, rtol=1e-6)


def test_init_matches_llmc_random_init():
    params = init_params(CFG)
    assert params.dtype == np.float32 and params.size == sum(math.prod(s) for s in param_shapes(CFG).values())
    g, off, L, C, V = TorchCompatibleNormal(42), offsets(CFG), CFG.num_layers, CFG.channels, CFG.vocab_size
    expected = np.zeros_like(params)
    expected[off["wte"]][: V * C] = g.normal(V * C, 0.02)  # padded rows stay zero
    expected[off["wpe"]] = g.normal(CFG.max_seq_len * C, 0.02)
    sizes = {"qkvw": 3 * C * C, "attprojw": C * C, "fcw": 4 * C * C, "fcprojw": 4 * C * C}
    for l in range(L):
        for name in ("qkvw", "attprojw", "fcw", "fcprojw"):
            std = 0.02 / math.sqrt(2 * L) if name in ("attprojw", "fcprojw") else 0.02
            start = off[name].start + l * sizes[name]
            expected[start: start + sizes[name]] = g.normal(sizes[name], std)
    for name in ("ln1w", "ln2w", "lnfw"):
        expected[off[name]] = 1.0
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-7)  # float32 sin/cos ulps near 0
    assert not params[off["wte"]][V * C:].any()


def test_flat_model_round_trip_is_exact():
    flat = np.random.default_rng(0).standard_normal(init_params(CFG).size).astype(np.float32)
    model = GPT2(CFG, flat)
    assert model.flat_params().tobytes() == flat.tobytes()
    assert tuple(model.p["qkvw"].shape) == (CFG.num_layers, 3 * CFG.channels, CFG.channels)
    with pytest.raises(ValueError):
        GPT2(CFG, flat[:-1])


def test_padded_vocab_gets_zero_logits_and_zero_grads():
    model = GPT2(CFG, init_params(CFG))
    x = torch.randint(0, CFG.vocab_size, (2, 7))
    logits, loss = model(x, torch.randint(0, CFG.vocab_size, (2, 7)))
    assert logits.shape == (2, 7, CFG.padded_vocab_size) and not logits[..., CFG.vocab_size:].any()
    loss.backward()
    assert not model.p["wte"].grad[CFG.vocab_size:].any() and model.p["wte"].grad[: CFG.vocab_size].any()


def test_loss_is_cross_entropy_over_real_vocab():
    model = GPT2(CFG, init_params(CFG))
    x, y = torch.randint(0, CFG.vocab_size, (3, 5)), torch.randint(0, CFG.vocab_size, (3, 5))
    logits, loss = model(x, y)
    logp = torch.log_softmax(logits[..., : CFG.vocab_size].double(), dim=-1)
    expected = -logp.gather(-1, y[..., None]).mean()
    assert abs(loss.item() - expected.item()) < 1e-6


def test_causal_attention_ignores_the_future():
    model = GPT2(CFG, init_params(CFG))
    x = torch.randint(0, CFG.vocab_size, (1, 9))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % CFG.vocab_size
    a, _ = model(x)
    b, _ = model(y)
    assert torch.equal(a[0, :6], b[0, :6]) and not torch.equal(a[0, 6:], b[0, 6:])


def test_adamw_step_is_llmc_update():
    """One optimizer step equals train_gpt2.c's gpt2_update formula, on the decayed set chosen."""
    params = init_params(CFG)
    x, y = torch.randint(0, CFG.vocab_size, (2, 7)), torch.randint(0, CFG.vocab_size, (2, 7))
    off = offsets(CFG)
    for decay_all in (True, False):
        model = GPT2(CFG, params)
        opt = make_optimizer(model, decay_all)
        model(x, y)[1].backward()
        grad = model.flat_grads().astype(np.float64)
        opt.step()
        wd = np.full(params.size, TEST_ADAMW.weight_decay if decay_all else 0.0)
        for name in DECAYED_PARAMS:
            wd[off[name]] = TEST_ADAMW.weight_decay
        b1, b2 = TEST_ADAMW.beta1, TEST_ADAMW.beta2
        m_hat = (1 - b1) * grad / (1 - b1)
        v_hat = (1 - b2) * grad**2 / (1 - b2)
        p = params.astype(np.float64)
        expected = p - TEST_ADAMW.lr * (m_hat / (np.sqrt(v_hat) + TEST_ADAMW.eps) + wd * p)
        np.testing.assert_allclose(model.flat_params(), expected, rtol=0, atol=1e-7)


def test_debug_state_round_trip(tmp_path):
    model_path, state_path = write_reference(tmp_path, CFG, B=3, T=CFG.max_seq_len, steps=10)
    cfg, params = read_model(model_path)
    assert cfg == CFG and params.tobytes() == init_params(CFG).tobytes()
    state = read_debug_state(state_path, cfg)
    assert state.inputs.shape == (3, CFG.max_seq_len) and state.logits.shape == (3, CFG.max_seq_len, CFG.vocab_size)
    assert state.grads.size == params.size and len(state.ref_losses) == 10
    np.testing.assert_array_equal(state.inputs[:, 1:], state.targets[:, :-1])
    assert state.ref_losses[0] == np.float32(state.loss)
    assert np.all(np.diff(state.ref_losses) < 0)  # overfitting one batch
    # recomputing from what was read gives the same bytes: deterministic, and nothing lost on the way
    again = make_debug_state(cfg, params, state.inputs, state.targets, steps=10)
    np.testing.assert_array_equal(again.logits, state.logits)
    np.testing.assert_array_equal(again.grads, state.grads)
    np.testing.assert_array_equal(again.ref_losses, state.ref_losses)
    assert not state.grads[offsets(CFG)["wte"]][CFG.vocab_size * CFG.channels:].any()


def test_weight_decay_choice_is_below_test_tolerance():
    params = init_params(CFG)
    x = np.random.default_rng(1).integers(0, CFG.vocab_size, size=(2, 8))
    a = make_debug_state(CFG, params, x, np.roll(x, -1, axis=1), steps=10, decay_all=True)
    b = make_debug_state(CFG, params, x, np.roll(x, -1, axis=1), steps=10, decay_all=False)
    assert a.ref_losses[0] == b.ref_losses[0] and not np.array_equal(a.ref_losses, b.ref_losses)
    assert np.abs(a.ref_losses - b.ref_losses).max() < 1e-4


def test_no_trailer_with_zero_steps():
    x = np.zeros((1, 4), dtype=np.int32)
    assert make_debug_state(CFG, init_params(CFG), x, x, steps=0).ref_losses is None

"""FP8 (-f8 1) on the CPU, the GPU's reference: the per-tensor casts, the FP8 GEMMs against the unquantized
products, and both model families trained through core/linears.py's FP8 layers."""

import ml_dtypes
import numpy as np
import pytest

from llmc.core import cpu
from llmc.core.config import GPTConfig
from llmc.core.init import random_init
from llmc.core.llama import Llama
from llmc.core.llama_config import LlamaConfig, random_init as llama_random_init
from llmc.core.model import GPT
from llmc.core.primitives import E4M3_MAX, E5M2_MAX, Fp8


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("e5m2,fmt,fmt_max,ulp", [(False, ml_dtypes.float8_e4m3fn, E4M3_MAX, 2 ** -3),
                                                  (True, ml_dtypes.float8_e5m2, E5M2_MAX, 2 ** -2)])
def test_quantize_scales_the_amax_to_the_format_max(rng, e5m2, fmt, fmt_max, ulp):
    x = (rng.standard_normal((48, 80)) * 1e-3).astype(np.float32)
    x[3, 5] = -0.01  # the amax
    out, out_t, scale_inv = np.zeros((48, 80), np.uint8), np.zeros((80, 48), np.uint8), np.zeros(1, np.float32)
    cpu.quantize_fp8(out, out_t, scale_inv, x, e5m2=e5m2)
    values = out.view(fmt).astype(np.float32)
    assert values[3, 5] == -fmt_max and np.abs(values).max() == fmt_max
    np.testing.assert_allclose(scale_inv[0] * fmt_max, 0.01, rtol=1e-6)
    np.testing.assert_array_equal(out_t, out.T)
    # each value to nearest: within half a unit in the last place (relative, normal numbers)
    back = values * scale_inv[0]
    normal = np.abs(x) > 0.01 * 2.0 ** (-6 if not e5m2 else -14)
    assert np.all(np.abs(back - x)[normal] <= 0.5 * ulp * np.abs(x)[normal] * 1.0001)


def test_quantize_an_all_zero_tensor_and_one_layout_alone():
    out_t, scale_inv = np.full((8, 16), 9, np.uint8), np.zeros(1, np.float32)
    cpu.quantize_fp8(None, out_t, scale_inv, np.zeros((16, 8), np.float32))
    assert not out_t.any() and np.isfinite(scale_inv).all()


def test_quantize_the_gelu_of_a_tensor(rng):
    """fcproj's cast of fc's output before its GELU: the GELU's values, scaled by their own amax."""
    pre = (rng.standard_normal((32, 64)) * 2).astype(np.float32)
    pre[1, 2] = -9.0  # a large negative input: its GELU is ~0, not the amax
    want, got = [np.zeros((32, 64), np.uint8) for _ in range(2)], [np.zeros((64, 32), np.uint8) for _ in range(2)]
    scales = [np.zeros(1, np.float32) for _ in range(2)]
    gelu = np.empty_like(pre)
    cpu.gelu_forward(gelu, pre)
    cpu.quantize_fp8(want[0], got[0], scales[0], gelu)
    cpu.quantize_fp8(want[1], got[1], scales[1], pre, gelu=True)
    np.testing.assert_array_equal(want[1], want[0])
    np.testing.assert_array_equal(got[1], got[0])
    assert scales[1][0] == scales[0][0] == np.float32(np.abs(gelu).max() / E4M3_MAX)


def quantized(x: np.ndarray, e5m2: bool = False, transposed: bool = False) -> Fp8:
    out, s = np.zeros(x.shape[::-1] if transposed else x.shape, np.uint8), np.zeros(1, np.float32)
    cpu.quantize_fp8(None if transposed else out, out if transposed else None, s, x, e5m2=e5m2)
    return Fp8(out, s)


def test_fp8_gemms_within_the_formats_rounding(rng):
    """E4M3 operands round by at most 2^-4 relative, E5M2 by 2^-3: the products' relative errors stay below."""
    N, C, OC = 64, 96, 80
    inp, weight, bias = rng.standard_normal((N, C)), rng.standard_normal((OC, C)) * 0.02, rng.standard_normal(OC)
    inp, weight, bias = (a.astype(np.float32) for a in (inp, weight, bias))
    out, pre = np.zeros((N, OC), np.float32), np.zeros((N, OC), np.float32)
    cpu.matmul_forward_fp8(out, quantized(inp), quantized(weight), bias, pre_gelu=pre)
    assert rel(pre, inp @ weight.T + bias) < 0.03
    gelu = np.zeros_like(pre)
    cpu.gelu_forward(gelu, pre)
    np.testing.assert_array_equal(out, gelu)

    dout = (rng.standard_normal((N, OC)) * 1e-4).astype(np.float32)
    dinp, dweight, dbias = np.zeros((N, C), np.float32), np.ones((OC, C), np.float32), np.ones(OC, np.float32)
    cpu.matmul_backward_fp8(dinp, dweight, dbias, dout, quantized(dout, e5m2=True),
                            quantized(dout, e5m2=True, transposed=True), quantized(inp, transposed=True),
                            quantized(weight, transposed=True))
    assert rel(dinp, dout @ weight) < 0.06
    assert rel(dweight - 1, dout.T @ inp) < 0.06
    np.testing.assert_allclose(dbias - 1, dout.sum(axis=0), atol=2e-7)  # from the unquantized gradient


GPT_CFG = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=2, num_heads=2, channels=32)
LLAMA_CFG = LlamaConfig(max_seq_len=32, vocab_size=101, num_layers=2, num_heads=4, num_kv_heads=2, channels=64,
                        ffn_dim_multiplier=1.0, multiple_of=32)


def one_step(Model, cfg, params, fp8: bool, recompute: int = 0, B: int = 4, T: int = 16):
    rng = np.random.default_rng(3)
    x, y = (rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32) for _ in range(2))
    model = Model(cfg, cpu, params, B, T, recompute=recompute, fp8=fp8)
    model.set_batch(x, y)
    model.zero_grad()
    model.forward(dloss=1.0 / (B * T))
    model.backward()
    return model.mean_loss(), {k: v.copy() for k, v in model.g.items()}


@pytest.mark.parametrize("family", ["gpt2", "llama3"])
def test_fp8_model_is_close_to_fp32_and_recompute_changes_nothing(family):
    Model, cfg = (GPT, GPT_CFG) if family == "gpt2" else (Llama, LLAMA_CFG)
    params = random_init(cfg) if family == "gpt2" else llama_random_init(cfg)
    loss32, grads32 = one_step(Model, cfg, params, fp8=False)
    loss8, grads8 = one_step(Model, cfg, params, fp8=True)
    assert abs(loss8 - loss32) < 0.02
    for name in ("qkvw", "attprojw", "fcw", "fcprojw", "wte"):  # the FP8 layers' weights and what flows past them
        assert rel(grads8[name], grads32[name]) < 0.1, name
    for recompute in (1, 2):  # inputs recomputed in the backward are cast again: the same bits
        loss, grads = one_step(Model, cfg, params, fp8=True, recompute=recompute)
        assert loss == loss8
        for name in grads8:
            np.testing.assert_array_equal(grads[name], grads8[name], err_msg=name)


def test_layers_whose_shapes_fp8_cannot_take_stay_in_full_precision():
    cfg = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=1, num_heads=2, channels=24)
    params = random_init(cfg)  # C = 24: no layer's dimensions are multiples of 16
    assert one_step(GPT, cfg, params, fp8=True)[0] == one_step(GPT, cfg, params, fp8=False)[0]

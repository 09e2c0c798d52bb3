"""core/llama_formats.py: llm.c's Llama 3 model file and debug state, checked against writers that follow
train_llama3.py (write_model/write_tensors with torch, write_state + write_training_history), round trips,
and one-line errors naming the file."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from llmc.core.errors import LlmcError
from llmc.core.llama_config import LlamaConfig, config_from_descriptor, num_parameters, param_shapes, random_init
from llmc.core.llama_formats import LlamaDebugState, read_debug_state, read_model, write_debug_state, write_model

# a tiny LLaMA: 4 heads of 4 channels, 2 kv heads, SwiGLU hidden 64 (int(1.3 * 42) = 54, up to a multiple of 32)
HP = dict(block_size=24, vocab_size=37, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, multiple_of=32,
          ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True, version="3.2")
CFG = LlamaConfig(max_seq_len=24, vocab_size=37, num_layers=2, num_heads=4, num_kv_heads=2, channels=16,
                  multiple_of=32, ffn_dim_multiplier=1.3, version_minor=2)
HIDDEN = 64


def random_params(cfg: LlamaConfig = CFG, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(num_parameters(cfg)).astype(np.float32)


def by_name(params: np.ndarray, cfg: LlamaConfig = CFG) -> dict[str, np.ndarray]:
    out, o = {}, 0
    for name, shape in param_shapes(cfg).items():
        n = int(np.prod(shape))
        out[name] = params[o: o + n].reshape(shape)
        o += n
    return out


def one_line_error(match: str, fn, *args) -> str:
    with pytest.raises(LlmcError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------- train_llama3.py's writer

def torch_tensors(torch) -> dict:
    """Named tensors of train_llama3.py's LLaMA (its state_dict keys), with a few bf16 rounding ties."""
    g = torch.Generator().manual_seed(0)
    C, L, V, H, QKV = 16, 2, 37, HIDDEN, (4 + 2 * 2) * 4
    t = {"transformer.wte.weight": torch.randn(V, C, generator=g), "lm_head.weight": torch.randn(V, C, generator=g),
         "transformer.ln_f.weight": 1 + 0.1 * torch.randn(C, generator=g)}
    t["transformer.wte.weight"][0, :4] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-130])
    for i in range(L):
        p = f"transformer.h.{i}."
        t[p + "ln_1.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        t[p + "attn.c_attn.weight"] = torch.randn(QKV, C, generator=g)
        t[p + "attn.c_proj.weight"] = torch.randn(C, C, generator=g)
        t[p + "ln_2.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        t[p + "mlp.c_fc.weight"] = torch.randn(H, C, generator=g)
        t[p + "mlp.c_fc2.weight"] = torch.randn(H, C, generator=g)
        t[p + "mlp.c_proj.weight"] = torch.randn(C, H, generator=g)
    return t


def torch_write_model(torch, path: Path, t: dict, dtype: str) -> None:
    """train_llama3.py's write_model and write_tensors: both headers, then the tensors with zero biases,
    lm_head in wpe's slot and c_fc, c_fc2 back to back per layer."""
    hi = torch.zeros(256, dtype=torch.int32)
    major, minor = (int(v) for v in HP["version"].split("."))
    hi[:12] = torch.tensor([20240803, {"float32": 3, "bfloat16": 5}[dtype], HP["block_size"], HP["vocab_size"],
                            HP["n_layer"], HP["n_head"], HP["n_kv_head"], HP["n_embd"], HP["multiple_of"],
                            int(HP["use_scaled_rope"]), major, minor], dtype=torch.int32)
    hf = torch.zeros(256, dtype=torch.float32)
    hf[0], hf[1], hf[2] = HP["ffn_dim_multiplier"], HP["norm_eps"], HP["rope_theta"]
    layers = range(HP["n_layer"])

    def layer(key):
        return [t[f"transformer.h.{i}.{key}"] for i in layers]

    def zero_rows(key):
        return [torch.zeros(w.size(0)) for w in layer(key)]

    fc = [w for i in layers for w in (t[f"transformer.h.{i}.mlp.c_fc.weight"], t[f"transformer.h.{i}.mlp.c_fc2.weight"])]
    fcb = [torch.zeros(a.size(0) + b.size(0)) for a, b in zip(fc[::2], fc[1::2])]
    sequence = [t["transformer.wte.weight"], t["lm_head.weight"], *layer("ln_1.weight"), *zero_rows("ln_1.weight"),
                *layer("attn.c_attn.weight"), *zero_rows("attn.c_attn.weight"), *layer("attn.c_proj.weight"),
                *zero_rows("attn.c_proj.weight"), *layer("ln_2.weight"), *zero_rows("ln_2.weight"), *fc, *fcb,
                *layer("mlp.c_proj.weight"), *zero_rows("mlp.c_proj.weight"), t["transformer.ln_f.weight"],
                torch.zeros_like(t["transformer.ln_f.weight"])]
    with open(path, "wb") as f:
        f.write(hi.numpy().tobytes())
        f.write(hf.numpy().tobytes())
        for w in sequence:
            if dtype == "float32":
                f.write(w.detach().to(torch.float32).numpy().tobytes())
            else:
                f.write(w.detach().to(torch.bfloat16).view(torch.int16).numpy().tobytes())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reads_and_rewrites_train_llama3_py_files(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    t = torch_tensors(torch)
    ref = tmp_path / "ref.bin"
    torch_write_model(torch, ref, t, dtype)
    cfg, params = read_model(ref)
    assert cfg == CFG and cfg.hidden_dim == HIDDEN
    rounded = (lambda w: w) if dtype == "float32" else (lambda w: w.to(torch.bfloat16).to(torch.float32))
    p = by_name(params)
    np.testing.assert_array_equal(p["wte"], rounded(t["transformer.wte.weight"]).numpy())
    np.testing.assert_array_equal(p["wlmhead"], rounded(t["lm_head.weight"]).numpy())
    np.testing.assert_array_equal(p["lnfw"], rounded(t["transformer.ln_f.weight"]).numpy())
    for i in range(2):
        h = f"transformer.h.{i}."
        np.testing.assert_array_equal(p["ln1w"][i], rounded(t[h + "ln_1.weight"]).numpy())
        np.testing.assert_array_equal(p["qkvw"][i], rounded(t[h + "attn.c_attn.weight"]).numpy())
        np.testing.assert_array_equal(p["attprojw"][i], rounded(t[h + "attn.c_proj.weight"]).numpy())
        np.testing.assert_array_equal(p["ln2w"][i], rounded(t[h + "ln_2.weight"]).numpy())
        np.testing.assert_array_equal(p["fcw"][i, :HIDDEN], rounded(t[h + "mlp.c_fc.weight"]).numpy())
        np.testing.assert_array_equal(p["fcw"][i, HIDDEN:], rounded(t[h + "mlp.c_fc2.weight"]).numpy())
        np.testing.assert_array_equal(p["fcprojw"][i], rounded(t[h + "mlp.c_proj.weight"]).numpy())
    for name in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        assert not p[name].any()

    # the writer produces the same bytes: from the read params, and for bf16 from the fp32 originals too
    ours = tmp_path / "ours.bin"
    short = "fp32" if dtype == "float32" else "bf16"
    write_model(ours, cfg, params, short)
    assert ours.read_bytes() == ref.read_bytes()
    if dtype == "bfloat16":
        torch_write_model(torch, tmp_path / "ref32.bin", t, "float32")
        write_model(ours, cfg, read_model(tmp_path / "ref32.bin")[1], "bf16")
        assert ours.read_bytes() == ref.read_bytes()  # torch's round-to-nearest-even, ties included


def test_header_layout(tmp_path):
    path = tmp_path / "m.bin"
    cfg = LlamaConfig(32, 50, 3, 4, 1, 8, 16, 1.5, norm_eps=1e-6, rope_theta=10000.0, use_scaled_rope=False,
                      version_major=3, version_minor=2)
    write_model(path, cfg, random_params(cfg), "bf16")
    raw = path.read_bytes()
    ints = np.frombuffer(raw[:1024], dtype="<i4")
    floats = np.frombuffer(raw[1024:2048], dtype="<f4")
    assert ints[:12].tolist() == [20240803, 5, 32, 50, 3, 4, 1, 8, 16, 0, 3, 2] and not ints[12:].any()
    assert floats[:3].tolist() == [1.5, np.float32(1e-6), 10000.0] and not floats[3:].any()
    assert len(raw) == 2048 + 2 * num_parameters(cfg)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_round_trip_is_byte_identical(tmp_path, dtype):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    params = random_params()
    write_model(a, CFG, params, dtype)
    cfg, got = read_model(a)
    assert cfg == CFG and got.dtype == np.float32 and got.shape == params.shape
    if dtype == "fp32":
        np.testing.assert_array_equal(got, params)
    else:
        np.testing.assert_allclose(got, params, rtol=2**-8)
    write_model(b, cfg, got, dtype)
    assert a.read_bytes() == b.read_bytes()


def test_descriptor_config_survives_its_file(tmp_path):
    cfg = config_from_descriptor("llama3:d2:c32:h4:kv2:t64:v99:f1.3:m16")
    write_model(tmp_path / "m.bin", cfg, random_init(cfg))
    assert read_model(tmp_path / "m.bin")[0] == cfg


def test_write_refuses_bad_arguments(tmp_path):
    one_line_error("needs", write_model, tmp_path / "m.bin", CFG, random_params()[:-1])
    one_line_error("fp32 or bf16", write_model, tmp_path / "m.bin", CFG, random_params(), "fp16")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- bad model files

def model_file(tmp_path: Path, mutate=None) -> Path:
    path = tmp_path / "model.bin"
    write_model(path, CFG, random_params())
    if mutate:
        raw = bytearray(path.read_bytes())
        mutate(raw)
        path.write_bytes(bytes(raw))
    return path


def set_int(i: int, v: int):
    return lambda raw: raw.__setitem__(slice(4 * i, 4 * i + 4), struct.pack("<i", v))


@pytest.mark.parametrize("mutate, match", [
    (set_int(0, 20240326), "bad magic 20240326 .*not a Llama 3 model file"),
    (set_int(1, 4), "unsupported Llama 3 model version 4"),
    (lambda raw: raw.__delitem__(slice(100, None)), "too short for a Llama 3 model header"),
    (lambda raw: raw.__delitem__(slice(1500, None)), "expected 2048 \\(truncated\\)"),
    (lambda raw: raw.__delitem__(slice(-3, None)), "truncated"),
    (lambda raw: raw.extend(b"\0"), "has .* bytes, expected"),
    (set_int(1, 5), "has .* bytes, expected"),  # an fp32 payload behind a bf16 header
    (set_int(5, 0), "bad model header: .*non-positive size"),
    (set_int(6, 3), "bad model header: heads 4 not divisible by kv heads 3"),
    (lambda raw: raw.__setitem__(slice(1024, 1028), struct.pack("<f", float("nan"))), "bad model header: .*ffn_dim"),
])
def test_bad_model_files(tmp_path, mutate, match):
    path = model_file(tmp_path, mutate)
    message = one_line_error(match, read_model, path)
    assert message.startswith(str(path))


# ----------------------------------------------------------------------------- debug states

def state(B: int = 2, T: int = 5, steps: int = 3) -> LlamaDebugState:
    rng = np.random.default_rng(1)
    V = CFG.vocab_size
    history = (rng.random(steps).astype(np.float32), rng.random(steps).astype(np.float32)) if steps else (None, None)
    return LlamaDebugState(rng.integers(0, V, (B, T), dtype=np.int32), rng.integers(0, V, (B, T), dtype=np.int32),
                           rng.standard_normal((B, T, V)).astype(np.float32), 3.25, random_params(CFG, 2), *history)


def reference_state(path: Path, s: LlamaDebugState) -> None:
    """train_llama3.py's write_state, then write_training_history amending it in place."""
    header = np.zeros(256, dtype=np.int32)
    header[:5] = [20240803, 3, s.inputs.shape[0], s.inputs.shape[1], 0]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(s.inputs.astype("int32").tobytes())
        f.write(s.targets.astype("int32").tobytes())
        f.write(s.logits.astype(np.float32).tobytes())
        f.write(np.float32(s.loss).tobytes())
        f.write(s.grads.astype(np.float32).tobytes())
    if s.ref_losses is not None:
        with open(path, "r+b") as f:
            header = np.frombuffer(f.read(256 * 4), dtype=np.int32).copy()
            header[4] = len(s.ref_losses)
            f.seek(0, os.SEEK_SET)
            f.write(header.tobytes())
            f.seek(0, os.SEEK_END)
            f.write(np.asarray(s.ref_losses).astype(np.float32).tobytes())
            f.write(np.asarray(s.ref_norms).astype(np.float32).tobytes())


@pytest.mark.parametrize("steps", [0, 3])
def test_debug_state_round_trip_and_bytes(tmp_path, steps):
    s = state(steps=steps)
    ours, ref = tmp_path / "ours.bin", tmp_path / "ref.bin"
    write_debug_state(ours, s)
    reference_state(ref, s)
    assert ours.read_bytes() == ref.read_bytes()
    got = read_debug_state(ours, CFG)
    assert isinstance(got, LlamaDebugState)
    np.testing.assert_array_equal(got.inputs, s.inputs)
    np.testing.assert_array_equal(got.targets, s.targets)
    np.testing.assert_array_equal(got.logits, s.logits)
    np.testing.assert_array_equal(got.grads, s.grads)
    assert got.loss == 3.25 and got.inputs.dtype == np.int32 and got.logits.shape == (2, 5, 37)
    if steps:
        np.testing.assert_array_equal(got.ref_losses, s.ref_losses)
        np.testing.assert_array_equal(got.ref_norms, s.ref_norms)
    else:
        assert got.ref_losses is None and got.ref_norms is None


def test_debug_state_history_needs_losses_and_norms_alike(tmp_path):
    s = state()
    s.ref_norms = s.ref_norms[:2]
    one_line_error("as many grad norms as losses", write_debug_state, tmp_path / "s.bin", s)
    s.ref_norms = None
    one_line_error("as many grad norms as losses", write_debug_state, tmp_path / "s.bin", s)
    assert not list(tmp_path.iterdir())


def state_file(tmp_path: Path, mutate) -> Path:
    path = tmp_path / "state.bin"
    write_debug_state(path, state())
    raw = bytearray(path.read_bytes())
    mutate(raw)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("mutate, match", [
    (set_int(0, 20240327), "bad magic 20240327 .*not a Llama 3 debug state file"),
    (set_int(1, 2), "unsupported Llama 3 debug state version 2"),
    (set_int(2, 0), "B=0"),
    (set_int(4, -1), "-1 history steps"),
    (set_int(3, 25), "T=25, beyond the model's max sequence length 24"),
    (set_int(4, 4), "truncated"),
    (set_int(4, 2), "has .* bytes, expected"),
    (lambda raw: raw.__delitem__(slice(-1, None)), "truncated"),
    (lambda raw: raw.extend(b"\0\0\0\0"), "has .* bytes, expected"),
    (lambda raw: raw.__setitem__(slice(1024, 1028), struct.pack("<i", 37)), "outside the model's vocab"),
    (lambda raw: raw.__setitem__(slice(1064, 1068), struct.pack("<i", -1)), "outside the model's vocab"),
])
def test_bad_debug_states(tmp_path, mutate, match):
    path = state_file(tmp_path, mutate)
    assert one_line_error(match, read_debug_state, path, CFG).startswith(str(path))

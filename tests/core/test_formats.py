"""llm.c's binary files: round trips, the exact bytes at each offset, bf16 rounding, and clear errors
(with the path) for bad magic, bad version, truncation and trailing garbage."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from llmc.core import formats
from llmc.core.config import GPTConfig, num_parameters, param_shapes
from llmc.core.errors import LlmcError
from llmc.core.formats import DebugState, EvalExample

CFG = GPTConfig(max_seq_len=9, vocab_size=37, padded_vocab_size=128, num_layers=2, num_heads=3, channels=6)


def header_ints(path: Path, n: int = 8) -> list[int]:
    return list(struct.unpack(f"<{n}i", path.read_bytes()[: 4 * n]))


def assert_header_tail_zero(path: Path, used: int) -> None:
    header = np.frombuffer(path.read_bytes()[:1024], dtype="<i4")
    assert not header[used:].any()


def random_params(cfg: GPTConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(num_parameters(cfg)).astype(np.float32)


def debug_state(B: int = 2, T: int = 5, trailer: bool = True) -> DebugState:
    rng = np.random.default_rng(1)
    V = CFG.vocab_size
    return DebugState(inputs=rng.integers(0, V, (B, T), dtype=np.int32), targets=rng.integers(0, V, (B, T), dtype=np.int32),
                      logits=rng.standard_normal((B, T, V)).astype(np.float32), loss=3.25,
                      grads=random_params(CFG, 2), ref_losses=np.array([3.25, 3.0, 2.5], np.float32) if trailer else None)


EXAMPLES = [EvalExample(index=0, label=2, context=[10, 11, 12], completions=[[1], [2, 3], [4, 5, 6], [7]]),
            EvalExample(index=1, label=0, context=[65534], completions=[[0, 9], [8]])]


# ----------------------------------------------------------------------------- round trips and bytes

def test_shard_round_trip_and_bytes(tmp_path):
    path = tmp_path / "shard.bin"
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    formats.write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    assert header_ints(path, 3) == [20240520, 1, len(tokens)]
    assert_header_tail_zero(path, 3)
    assert raw[1024:] == struct.pack("<5H", *tokens.tolist())
    got = formats.read_shard(path)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, tokens)


def test_llama3_shard_round_trip_and_bytes(tmp_path):
    path = tmp_path / "shard.bin"
    tokens = np.array([128000, 0, 65535, 65536, 128255, 2**32 - 1], dtype=np.int64)
    formats.write_shard(path, tokens, "llama-3")
    raw = path.read_bytes()
    assert len(raw) == 1024 + 4 * len(tokens)
    assert header_ints(path, 3) == [20240801, 7, len(tokens)]  # llm.c's llama3 branch: magic, version 7, count
    assert_header_tail_zero(path, 3)
    assert raw[1024:] == struct.pack("<6I", *tokens.tolist())
    got = formats.read_shard(path)
    assert got.dtype == np.uint32 and not got.flags.writeable
    np.testing.assert_array_equal(got, tokens)


@pytest.mark.parametrize("model_desc, dtype", [("gpt-2", np.uint16), ("llama-3", np.uint32)])
def test_empty_shard_round_trip(tmp_path, model_desc, dtype):
    formats.write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16), model_desc)
    got = formats.read_shard(tmp_path / "e.bin")
    assert got.size == 0 and got.dtype == dtype


@pytest.mark.parametrize("model_desc, bad", [("gpt-2", -1), ("gpt-2", 65536), ("llama-3", -1), ("llama-3", 2**32)])
def test_shard_rejects_tokens_beyond_its_dtype(tmp_path, model_desc, bad):
    with pytest.raises(LlmcError, match="uint16" if model_desc == "gpt-2" else "uint32"):
        formats.write_shard(tmp_path / "s.bin", np.array([1, bad]), model_desc)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("magic, version", [(20240520, 7), (20240801, 1)])
def test_shard_version_must_match_its_magic(tmp_path, magic, version):
    path = tmp_path / "s.bin"
    formats.write_shard(path, np.arange(10), "gpt-2" if magic == 20240520 else "llama-3")
    rewrite(path, 4, version)
    expect_error(path, formats.read_shard, "version")


def test_shard_bad_magic_names_both_kinds(tmp_path):
    path = tmp_path / "s.bin"
    formats.write_shard(path, np.arange(10))
    rewrite(path, 0, 20240522)  # an eval file's magic
    expect_error(path, formats.read_shard, "expected 20240520 for gpt-2 or 20240801 for llama-3")


def test_eval_shard_round_trip_and_bytes(tmp_path):
    path = tmp_path / "eval.bin"
    formats.write_eval_shard(path, EXAMPLES)
    words0 = [65535, 0, 0, 2, 4, 3, 10, 11, 12, 1, 1, 2, 2, 3, 3, 4, 5, 6, 1, 7]
    words0[1] = 2 * len(words0)
    words1 = [65535, 0, 1, 0, 2, 1, 65534, 2, 0, 9, 1, 8]
    words1[1] = 2 * len(words1)
    assert header_ints(path, 4) == [20240522, 1, 2, 2 * len(words0)]  # [3] = longest example in bytes
    assert_header_tail_zero(path, 4)
    assert path.read_bytes()[1024:] == struct.pack(f"<{len(words0) + len(words1)}H", *words0, *words1)
    assert formats.read_eval_shard(path) == EXAMPLES


@pytest.mark.parametrize("dtype,version", [("fp32", 3), ("bf16", 5)])
def test_model_round_trip_and_bytes(tmp_path, dtype, version):
    path = tmp_path / f"model_{dtype}.bin"
    params = random_params(CFG)
    formats.write_model(path, CFG, params, dtype)
    n = num_parameters(CFG)
    itemsize = 4 if dtype == "fp32" else 2
    assert path.stat().st_size == 1024 + itemsize * n
    assert header_ints(path) == [20240326, version, CFG.max_seq_len, CFG.vocab_size, CFG.num_layers,
                                 CFG.num_heads, CFG.channels, CFG.padded_vocab_size]
    assert_header_tail_zero(path, 8)
    assert formats.read_model_config(path) == (CFG, version)
    cfg, got = formats.read_model(path)
    assert cfg == CFG and got.dtype == np.float32 and got.shape == (n,)
    if dtype == "fp32":
        assert path.read_bytes()[1024:] == params.astype("<f4").tobytes()
        np.testing.assert_array_equal(got, params)
    else:
        torch = pytest.importorskip("torch")
        expected = torch.from_numpy(params).to(torch.bfloat16)
        assert path.read_bytes()[1024:] == expected.view(torch.int16).numpy().astype("<i2").tobytes()
        np.testing.assert_array_equal(got, expected.float().numpy())


def test_model_parameter_order_is_llmc():
    assert list(param_shapes(CFG)) == ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                                       "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]
    L, C, Vp, maxT = CFG.num_layers, CFG.channels, CFG.padded_vocab_size, CFG.max_seq_len
    assert param_shapes(CFG)["wte"] == (Vp, C) and param_shapes(CFG)["wpe"] == (maxT, C)
    assert param_shapes(CFG)["qkvw"] == (L, 3 * C, C) and param_shapes(CFG)["fcprojw"] == (L, C, 4 * C)


def test_model_writer_rejects_wrong_sizes_and_dtypes(tmp_path):
    with pytest.raises(LlmcError, match="parameters"):
        formats.write_model(tmp_path / "m.bin", CFG, random_params(CFG)[:-1])
    with pytest.raises(LlmcError, match="fp32 or bf16"):
        formats.write_model(tmp_path / "m.bin", CFG, random_params(CFG), "fp16")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("trailer", [True, False])
def test_debug_state_round_trip_and_bytes(tmp_path, trailer):
    path = tmp_path / "state.bin"
    state = debug_state(trailer=trailer)
    formats.write_debug_state(path, state)
    B, T, V, n = 2, 5, CFG.vocab_size, num_parameters(CFG)
    raw = path.read_bytes()
    body = 1024 + 4 * (2 * B * T + B * T * V + 1 + n)
    assert len(raw) == body + (4 + 4 * 3 if trailer else 0)
    assert header_ints(path, 4) == [20240327, 2, B, T]
    assert_header_tail_zero(path, 4)
    pos = 1024
    for arr, dt in ((state.inputs, "<i4"), (state.targets, "<i4"), (state.logits, "<f4"),
                    (np.float32(state.loss), "<f4"), (state.grads, "<f4")):
        chunk = np.asarray(arr, dtype=dt).tobytes()
        assert raw[pos: pos + len(chunk)] == chunk
        pos += len(chunk)
    if trailer:
        assert raw[pos:] == struct.pack("<i3f", 3, 3.25, 3.0, 2.5)
    got = formats.read_debug_state(path, CFG)
    for field in ("inputs", "targets", "logits", "grads"):
        np.testing.assert_array_equal(getattr(got, field), getattr(state, field))
    assert got.inputs.shape == (B, T) and got.logits.shape == (B, T, V)
    assert got.loss == 3.25
    if trailer:
        np.testing.assert_array_equal(got.ref_losses, state.ref_losses)
    else:
        assert got.ref_losses is None


def test_debug_state_rejects_tokens_outside_the_model_vocab(tmp_path):
    state = debug_state()
    state.inputs[0, 0] = CFG.vocab_size
    formats.write_debug_state(tmp_path / "s.bin", state)
    with pytest.raises(LlmcError, match="vocab"):
        formats.read_debug_state(tmp_path / "s.bin", CFG)


def test_tokenizer_round_trip_and_bytes(tmp_path):
    path = tmp_path / "tok.bin"
    tokens = [b"a", b" the", bytes(range(1, 256)), b"\xff\x00", b"<|endoftext|>"]
    formats.write_tokenizer(path, tokens, eot=4)
    assert header_ints(path, 4) == [20240328, 2, 5, 4]
    assert_header_tail_zero(path, 4)
    assert path.read_bytes()[1024:] == b"".join(bytes([len(t)]) + t for t in tokens)
    assert formats.read_tokenizer(path) == (tokens, 4)


@pytest.mark.parametrize("bad", [b"", bytes(256)])
def test_tokenizer_rejects_tokens_llmc_cannot_store(tmp_path, bad):
    path = tmp_path / "tok.bin"
    path.write_bytes(b"old")
    with pytest.raises(LlmcError, match="token 1"):
        formats.write_tokenizer(path, [b"a", bad, b"c"], eot=0)
    assert path.read_bytes() == b"old"  # the failed write left the old file alone
    assert [p.name for p in tmp_path.iterdir()] == ["tok.bin"]


# ----------------------------------------------------------------------------- bf16

def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    # random values over many exponents; exact ties with even and odd kept bit; values rounding to inf
    randoms = (rng.standard_normal(20000) * np.exp2(rng.integers(-140, 120, 20000))).astype(np.float32)
    hi = rng.integers(0, 1 << 16, 4000, dtype=np.uint32) & 0xFF7F  # exponent below all-ones: finite
    ties = ((hi << 16) | 0x8000).view(np.float32)
    near_ties = np.concatenate([((hi << 16) | 0x7FFF).view(np.float32), ((hi << 16) | 0x8001).view(np.float32)])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                        np.finfo(np.float32).tiny, 1e-45, -1e-45, 1.0, 1.00390625, 1.005859375], dtype=np.float32)
    x = np.concatenate([randoms, ties, near_ties, special])
    got = formats.f32_to_bf16_bits(x)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(got, want)
    assert got[-2] == 0x3F80 and got[-1] == 0x3F81  # ties to even: 1+2^-8 down, 1+3*2^-9 up
    np.testing.assert_array_equal(formats.bf16_bits_to_f32(got), torch.from_numpy(want.view(np.int16)).view(torch.bfloat16).float().numpy())


def test_bf16_keeps_nan_a_nan():
    nans = np.array([np.nan, -np.nan], dtype=np.float32)
    payloads = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF], dtype=np.uint32).view(np.float32)
    x = np.concatenate([nans, payloads])
    assert np.isnan(formats.bf16_bits_to_f32(formats.f32_to_bf16_bits(x))).all()


# ----------------------------------------------------------------------------- bad files

def write_each(tmp_path: Path) -> dict[str, tuple[Path, callable]]:
    """One valid file of each kind, with its reader."""
    files = {
        "shard": (tmp_path / "shard.bin", formats.read_shard),
        "llama3_shard": (tmp_path / "llama3.bin", formats.read_shard),
        "eval": (tmp_path / "eval.bin", formats.read_eval_shard),
        "model": (tmp_path / "model.bin", formats.read_model),
        "state": (tmp_path / "state.bin", lambda p: formats.read_debug_state(p, CFG)),
        "tokenizer": (tmp_path / "tok.bin", formats.read_tokenizer),
    }
    formats.write_shard(files["shard"][0], np.arange(100))
    formats.write_shard(files["llama3_shard"][0], np.arange(100), "llama-3")
    formats.write_eval_shard(files["eval"][0], EXAMPLES)
    formats.write_model(files["model"][0], CFG, random_params(CFG))
    formats.write_debug_state(files["state"][0], debug_state(trailer=False))
    formats.write_tokenizer(files["tokenizer"][0], [b"ab", b"c", b"def"], eot=2)
    return files


KINDS = ["shard", "llama3_shard", "eval", "model", "state", "tokenizer"]


def rewrite(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset: offset + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(raw))


def expect_error(path: Path, reader, match: str) -> None:
    with pytest.raises(LlmcError, match=match) as err:
        reader(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_magic(tmp_path, kind):
    path, reader = write_each(tmp_path)[kind]
    rewrite(path, 0, 12345678)
    expect_error(path, reader, "magic")


@pytest.mark.parametrize("kind", KINDS)
def test_bad_version(tmp_path, kind):
    path, reader = write_each(tmp_path)[kind]
    rewrite(path, 4, 4)  # version 4: no format has it (the model knows 3 and 5)
    expect_error(path, reader, "version")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep", ["header", "payload"])
def test_truncated(tmp_path, kind, keep):
    path, reader = write_each(tmp_path)[kind]
    raw = path.read_bytes()
    path.write_bytes(raw[:500] if keep == "header" else raw[:-3])
    expect_error(path, reader, "short|truncated|expected")


@pytest.mark.parametrize("kind", KINDS)
def test_trailing_garbage(tmp_path, kind):
    path, reader = write_each(tmp_path)[kind]
    # 6 bytes: not a whole number of tokens/parameters, and not a state's loss trailer (int32 n, n floats)
    path.write_bytes(path.read_bytes() + b"\x01\x00\x00\x00ab")
    expect_error(path, reader, "trailing|expected|trailer")


def test_state_trailer_with_a_wrong_count_is_rejected(tmp_path):
    path, reader = write_each(tmp_path)["state"]
    path.write_bytes(path.read_bytes() + struct.pack("<i2f", 3, 1.0, 2.0))  # says 3 losses, holds 2
    expect_error(path, reader, "trailer")


@pytest.mark.parametrize("size_field", [0, 2, 11, 13, 60000])
def test_eval_shard_with_a_corrupt_example_size_is_rejected(tmp_path, size_field):
    path, reader = write_each(tmp_path)["eval"]
    raw = bytearray(path.read_bytes())
    raw[1026:1028] = struct.pack("<H", size_field)  # the first example's size in bytes
    path.write_bytes(bytes(raw))
    expect_error(path, reader, "example 0")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        formats.read_shard(tmp_path / "nope.bin")


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_no_file_on_exception(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with formats.atomic_write(path) as f:
            f.write(b"half of it")
            raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())


def test_atomic_write_keeps_the_old_file_on_exception(tmp_path):
    path = tmp_path / "out.bin"
    formats.write_shard(path, np.arange(10))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with formats.atomic_write(path) as f:
            f.write(b"new")
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with formats.atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert os.stat(path).st_size == 3

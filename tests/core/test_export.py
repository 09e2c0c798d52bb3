"""`llmc export-weights`' core: HF GPT-2 -> llm.c's files (bf16 rounding, debug batch and state,
tokenizers) and back, checked against transformers and the PyTorch reference."""

import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmc.core.config import param_shapes  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.export import debug_batch, export_to_hf, export_to_llmc  # noqa: E402
from llmc.core.formats import HEADER_BYTES, read_debug_state, read_model, read_shard, write_shard  # noqa: E402
from llmc.core.torch_gpt2 import make_debug_state  # noqa: E402
from llmc.tests.core.test_hf_weights import make_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """test_hf_weights' random GPT-2, bf16 ties planted, saved by transformers."""
    path = tmp_path_factory.mktemp("hf")
    make_hf_model(path)
    return path


def test_bin_to_hf_to_bin_is_byte_identical(hf_dir, tmp_path):
    export_to_llmc(str(hf_dir), tmp_path / "a", echo=lambda s: None)
    first = (tmp_path / "a" / "gpt2_L2H3C12.bin").read_bytes()
    export_to_hf(tmp_path / "a" / "gpt2_L2H3C12.bin", tmp_path / "hf", echo=lambda s: None)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    original = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    x = torch.randint(0, 101, (2, 24))
    assert torch.equal(reloaded(x).logits, original(x).logits)
    export_to_llmc(str(tmp_path / "hf"), tmp_path / "b", echo=lambda s: None)
    assert (tmp_path / "b" / "gpt2_L2H3C12.bin").read_bytes() == first
    assert (tmp_path / "b" / "gpt2_L2H3C12_bf16.bin").read_bytes() == (tmp_path / "a" / "gpt2_L2H3C12_bf16.bin").read_bytes()


def test_bf16_file_is_torch_round_to_nearest_even(hf_dir, tmp_path):
    export_to_llmc(str(hf_dir), tmp_path, echo=lambda s: None)
    cfg, flat = read_model(tmp_path / "gpt2_L2H3C12.bin")
    raw = (tmp_path / "gpt2_L2H3C12_bf16.bin").read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert header[:8].tolist() == [20240326, 5, 24, 101, 2, 3, 12, 128]
    bits = np.frombuffer(raw[HEADER_BYTES:], dtype="<u2")
    expected = torch.from_numpy(flat).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, expected)
    # the planted ties landed in the file and round to even
    shapes = param_shapes(cfg)
    names = list(shapes)
    start = sum(math.prod(shapes[n]) for n in names[: names.index("qkvb")])  # layer 0's qkvb
    assert bits[start: start + 3].tolist() == [0x3F80, 0x3F82, 0xBF80]


def test_debug_state_from_a_shard_matches_the_reference(hf_dir, tmp_path):
    tokens = np.random.default_rng(3).integers(0, 101, size=300)
    write_shard(tmp_path / "val.bin", tokens)
    written = export_to_llmc(str(hf_dir), tmp_path / "out", echo=lambda s: None, debug_state=True,
                             batch_input=str(tmp_path / "val.bin"), B=2, T=24, steps=3)
    assert [p.name for p in written][-1] == "gpt2_L2H3C12_debug_state.bin"
    cfg, flat = read_model(tmp_path / "out" / "gpt2_L2H3C12.bin")
    state = read_debug_state(written[-1], cfg)
    np.testing.assert_array_equal(state.inputs.reshape(-1), tokens[:48])
    np.testing.assert_array_equal(state.targets.reshape(-1), tokens[1:49])
    ref = make_debug_state(cfg, flat, state.inputs, state.targets, steps=3)
    np.testing.assert_array_equal(state.grads, ref.grads)
    np.testing.assert_array_equal(state.ref_losses, ref.ref_losses)


def test_debug_batch_from_text_follows_llmc_tinyshakespeare(tmp_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from llmc.data.tokenizer import GPT2_PATTERN, RANKS_FILE

    enc = tiktoken.Encoding("gpt2-test", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(RANKS_FILE)),
                            special_tokens={"<|endoftext|>": 50256})
    text = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved"
    (tmp_path / "t.txt").write_text(text)
    expected = []
    sections = text.split("\n\n")
    for i, s in enumerate(sections):
        expected += [50256] + enc.encode_ordinary(s + "\n\n" if i < len(sections) - 1 else s)
    got = debug_batch(tmp_path / "t.txt", B=2, T=(len(expected) - 1) // 2)
    assert got.tolist() == expected[: len(got)] and len(got) >= len(expected) - 1
    with pytest.raises(LlmcError, match="B\\*T\\+1"):
        debug_batch(tmp_path / "t.txt", B=4, T=64)
    write_shard(tmp_path / "s.bin", np.arange(100))
    assert debug_batch(tmp_path / "s.bin", 3, 5).tolist() == list(range(16))
    assert read_shard(tmp_path / "s.bin").size == 100


def test_gpt2_vocab_export_writes_hf_tokenizer_and_llmc_tokenizer(tmp_path):
    from llmc.core.formats import read_tokenizer
    from llmc.data.tokenizer import gpt2_encoding

    make_hf_model(tmp_path / "hf", vocab_size=50257, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    export_to_llmc(str(tmp_path / "hf"), tmp_path / "bin", echo=lambda s: None)
    tokens, eot = read_tokenizer(tmp_path / "bin" / "gpt2_tokenizer.bin")
    enc = gpt2_encoding()
    assert eot == 50256 and len(tokens) == 50257 and tokens[198] == b"\n" and tokens[50256] == b"<|endoftext|>"
    assert all(tokens[i] == enc.decode_single_token_bytes(i) for i in range(0, 50257, 97))
    umask = os.umask(0o022)
    try:
        written = export_to_hf(tmp_path / "bin" / "gpt2_L1H2C8.bin", tmp_path / "hf2", echo=lambda s: None)
    finally:
        os.umask(umask)
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "hf2").iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "tokenizer_config.json", "vocab.json"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in written)
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["eos_token_id"] == 50256 and config["n_positions"] == 8
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf2")
    text = "First Citizen:\n  Before we proceed any further, hear me speak.\n\nAll:\tSpeak, speak. 1234 'tis ü 🤗<|endoftext|>"
    assert tok.encode(text) == enc.encode(text, allowed_special="all")
    assert tok.decode(enc.encode_ordinary(text)) == text

"""HF GPT-2 <-> llm.c checkpoints, checked against transformers' own GPT2LMHeadModel."""

import io
import json
import math
import os
import socket
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import safetensors.torch as safetensors_torch  # noqa: E402

from llmc.core.config import GPTConfig, param_shapes  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.formats import HEADER_BYTES, read_debug_state, read_model, read_shard, write_shard  # noqa: E402
from llmc.core.hf_weights import (_reachable, config_from_hf, debug_batch, export_to_hf, export_to_llmc,  # noqa: E402
                                  hf_to_llmc, load_hf, size_name)
from llmc.core.torch_gpt2 import GPT2, make_debug_state  # noqa: E402

# bf16 rounding ties (exactly half-way between two bf16 values) and neighbours, planted in a bias
BF16_TIES = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F808001, 0x3F807FFF, 0x3C018000, 0x00008000],
                     dtype=np.uint32).view(np.float32)


def make_hf_model(path, vocab_size=101, n_positions=24, n_embd=12, n_layer=2, n_head=3, seed=0):
    """A random transformers GPT-2 saved to path; every tensor random (biases, layernorms too)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                                     n_layer=n_layer, n_head=n_head, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.1) + (1.0 if name.endswith("ln_1.weight") else 0.0))
        b = model.transformer.h[0].attn.c_attn.bias
        b[: len(BF16_TIES)] = torch.from_numpy(BF16_TIES)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    make_hf_model(path)
    return path


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


def test_config_from_hf_maps_sizes_and_refuses_other_architectures():
    cfg = config_from_hf({"vocab_size": 50257, "n_positions": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768})
    assert cfg == GPTConfig(1024, 50257, 50304, 12, 12, 768) and size_name(cfg) == "124M"
    assert size_name(GPTConfig(1024, 50257, 50304, 6, 6, 384)) == "d6"
    base = {"vocab_size": 10, "n_positions": 8, "n_layer": 1, "n_head": 2, "n_embd": 4}
    for bad in ({"activation_function": "relu"}, {"layer_norm_epsilon": 1e-6}, {"n_inner": 7},
                {"scale_attn_by_inverse_layer_idx": True}, {"model_type": "llama"}, {"tie_word_embeddings": False}):
        with pytest.raises(LlmcError):
            config_from_hf(base | bad)
    with pytest.raises(LlmcError, match="n_embd"):
        config_from_hf({k: v for k, v in base.items() if k != "n_embd"})


def test_export_gives_transformers_logits_loss_and_grads(hf_dir, hf_model):
    cfg, flat = load_hf(str(hf_dir))
    assert cfg == GPTConfig(24, 101, 128, 2, 3, 12)
    assert not flat[101 * 12: 128 * 12].any()  # padded wte rows
    x = torch.randint(0, 101, (3, 24), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    model = GPT2(cfg, flat)
    logits, loss = model(x, y)
    hf_logits = hf_model(x).logits
    assert torch.allclose(logits[..., :101], hf_logits, rtol=0, atol=1e-5)
    hf_loss = torch.nn.functional.cross_entropy(hf_logits.reshape(-1, 101), y.reshape(-1))
    assert abs(loss.item() - hf_loss.item()) < 1e-5
    # gradients: HF's, put in llm.c order by the same mapping, equal the reference's flat grads
    loss.backward()
    hf_loss.backward()
    grads = {n.removeprefix("transformer."): p.grad.numpy() for n, p in hf_model.named_parameters()}
    np.testing.assert_allclose(model.flat_grads(), hf_to_llmc(cfg, grads.__getitem__), rtol=1e-5, atol=1e-7)
    hf_model.zero_grad()


def test_conv1d_weights_are_transposed_into_llmc_layout(hf_dir, hf_model):
    cfg, flat = load_hf(str(hf_dir))
    model = GPT2(cfg, flat)
    for l, block in enumerate(hf_model.transformer.h):
        assert torch.equal(model.p["qkvw"][l], block.attn.c_attn.weight.T)  # (3C, C) = HF (C, 3C) transposed
        assert torch.equal(model.p["fcprojw"][l], block.mlp.c_proj.weight.T)
    assert torch.equal(model.p["wte"][:101], hf_model.transformer.wte.weight)


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


def test_bf16_safetensors_are_read_through_torch(hf_dir, tmp_path):
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    safetensors_torch.save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, tmp_path / "model.safetensors",
                                metadata={"format": "pt"})
    cfg, flat = load_hf(str(tmp_path))
    _, ref = load_hf(str(hf_dir))
    np.testing.assert_array_equal(flat, torch.from_numpy(ref).to(torch.bfloat16).float().numpy())


def copy_with(hf_dir, dst, change):
    (dst / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = safetensors_torch.load_file(hf_dir / "model.safetensors")
    change(tensors)
    safetensors_torch.save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_bad_checkpoints_give_one_clear_error(hf_dir, tmp_path):
    data = (hf_dir / "model.safetensors").read_bytes()
    for i, cut in enumerate((len(data) - 100, 7)):
        d = tmp_path / f"cut{i}"
        d.mkdir()
        (d / "config.json").write_text((hf_dir / "config.json").read_text())
        (d / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(LlmcError, match="safetensors"):
            load_hf(str(d))
    cases = {
        "shape": (lambda t: t.update({"transformer.h.1.mlp.c_fc.weight": torch.zeros(12, 47)}), "h.1.mlp.c_fc.weight"),
        "missing": (lambda t: t.pop("transformer.ln_f.bias"), "ln_f.bias"),
        "extra": (lambda t: t.update({"transformer.h.0.attn.q_norm.weight": torch.zeros(3)}), "unexpected"),
        "untied": (lambda t: t.update({"lm_head.weight": torch.zeros(101, 12)}), "lm_head"),
    }
    for name, (change, message) in cases.items():
        (tmp_path / name).mkdir()
        with pytest.raises(LlmcError, match=message):
            load_hf(copy_with(hf_dir, tmp_path / name, change))
    (tmp_path / "tied").mkdir()  # a repeated lm_head and old mask buffers are fine
    ok = copy_with(hf_dir, tmp_path / "tied", lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].clone(),
                                                                 "transformer.h.0.attn.bias": torch.ones(1, 1, 24, 24)}))
    assert load_hf(ok)[1].tobytes() == load_hf(str(hf_dir))[1].tobytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmcError, match="no model.safetensors"):
        load_hf(str(tmp_path / "empty"))
    (tmp_path / "x.bin").touch()
    with pytest.raises(LlmcError, match="--to-hf"):
        load_hf(str(tmp_path / "x.bin"))


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


def test_llmc_cpu_forward_matches_transformers(hf_dir, hf_model):
    from llmc.core import cpu
    from llmc.core.model import GPT

    cfg, flat = load_hf(str(hf_dir))
    x = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    model = GPT(cfg, cpu, flat, B=2, T=24)
    model.set_batch(x.numpy(), y.numpy())
    model.forward(with_targets=True)
    hf_logits = hf_model(x).logits.detach().numpy()
    np.testing.assert_allclose(model.acts["logits"][..., :101], hf_logits, rtol=0, atol=1e-5)
    hf_loss = torch.nn.functional.cross_entropy(torch.from_numpy(hf_logits).reshape(-1, 101), y.reshape(-1))
    assert abs(model.mean_loss() - hf_loss.item()) < 1e-5


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bars."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal(hf_dir, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    cfg, flat = load_hf(str(hf_dir), echo=lambda s: None)
    x = np.zeros((1, 4), dtype=np.int32)
    make_debug_state(cfg, flat, x, x, steps=3)
    shown = sys.stderr.getvalue()
    assert "reading tensors" in shown and "/28 " in shown  # wte, wpe, 12 per layer * 2, ln_f's two
    assert "debug state" in shown and "/3 " in shown


@pytest.fixture
def listening():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_reachable_probes_the_endpoint_or_its_proxy(listening, monkeypatch):
    for key in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(key)
    assert _reachable(listening + "/some/path", timeout=1.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused at once
        start = time.monotonic()
        assert not _reachable(f"http://127.0.0.1:{closed.getsockname()[1]}", timeout=3.0)
        assert time.monotonic() - start < 1.0
    monkeypatch.setenv("https_proxy", listening)  # behind a proxy the hub is reached through it
    assert _reachable("https://hub.invalid", timeout=1.0)
    monkeypatch.setenv("no_proxy", "hub.invalid")
    assert not _reachable("https://hub.invalid", timeout=1.0)


def test_reachable_gives_up_on_a_hanging_connect(monkeypatch):
    release = threading.Event()

    def black_hole(*args, **kwargs):
        release.wait(30)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    start = time.monotonic()
    try:
        assert not _reachable("https://huggingface.co", timeout=0.5)
        assert time.monotonic() - start < 1.5
    finally:
        release.set()

"""HF GPT-2 <-> llm.c parameters, checked against transformers' own GPT2LMHeadModel."""

import io
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import safetensors.torch as safetensors_torch  # noqa: E402

from llmc.core.config import GPTConfig  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.export import size_name  # noqa: E402
from llmc.core.hf_weights import config_from_hf, hf_to_llmc, load_hf  # noqa: E402
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

"""`llmc export-weights` for Llama 3 (core/hf_llama.py) against transformers' LlamaForCausalLM: a tiny random
HF model (GQA, Llama 3.1's scaled RoPE, odd vocab, tied and untied), saved whole and sharded, exported to
llm.c's files must give HF's logits on llmc's CPU model; .bin -> --to-hf -> .bin is byte-identical and the
HF folder --to-hf writes gives HF's logits again; bad inputs fail in one line.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmc.cli.main import main  # noqa: E402
from llmc.core import cpu, families  # noqa: E402
from llmc.core.flat_model import views  # noqa: E402
from llmc.core.hf_llama import LLMC_ROPE_SCALING, config_from_hf, file_stem  # noqa: E402
from llmc.core.llama_config import NAMED_SHAPES, config_from_descriptor, param_shapes, random_init  # noqa: E402
from llmc.core.llama_formats import read_model, write_model  # noqa: E402
from llmc.tests.cli.test_export_weights import one_line_error  # noqa: E402

# V odd; GQA 4:2 at head size 16; intermediate_size 160 is no llm.c default (multiple_of 32, multiplier 0.9);
# theta 10000 so that head size 16 has frequencies scaled, smoothed and kept by Llama 3.1's RoPE scaling
V, C, L, NH, NKV, I, MAXT, T = 101, 64, 2, 4, 2, 160, 64, 64
STEM = f"llama3.1_L{L}H{NH}KV{NKV}C{C}"


def run(*args: str):
    return CliRunner().invoke(main, ["export-weights", *map(str, args)])


def hf_llama(tied: bool, seed: int = 0, rope: dict | None = None):
    """A random fp32 LlamaForCausalLM; matrices N(0, 1/fan_in) and RMSNorm weights near 1, so that
    logits are of order 1 (HF's 0.02 init would leave them near 0, and the comparison blind)."""
    hc = transformers.LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L, num_attention_heads=NH,
        num_key_value_heads=NKV, max_position_embeddings=MAXT, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters=rope or {**LLMC_ROPE_SCALING, "rope_theta": 10000.0}, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(hc).float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.dim() == 1:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t.shape[1]))
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


def tokens(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).integers(0, V, (n, T)).astype(np.int32)


def hf_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x.astype(np.int64))).logits.numpy()


def llmc_logits(path, x: np.ndarray) -> np.ndarray:
    family, cfg, params = families.load(str(path))
    assert family.name == "llama3"
    model = family.Model(cfg, cpu, params, x.shape[0], x.shape[1])
    model.set_batch(x)
    model.forward(with_targets=False)
    return np.array(model.acts["logits"])


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dirs(request, tmp_path_factory):
    """(model, whole folder, sharded folder)."""
    model = hf_llama(request.param)
    whole, sharded = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("hf_sharded")
    model.save_pretrained(whole)
    model.save_pretrained(sharded, max_shard_size="30KB")
    assert not (sharded / "model.safetensors").exists() and len(list(sharded.glob("*.safetensors"))) > 2
    return model, whole, sharded


@pytest.mark.parametrize("which", [1, 2], ids=["whole", "sharded"])
def test_export_gives_hf_logits(hf_dirs, which, tmp_path):
    model, folder = hf_dirs[0], hf_dirs[which]
    result = run(folder, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STEM}.bin", f"{STEM}_bf16.bin"]
    cfg, params = read_model(tmp_path / f"{STEM}.bin")
    assert (cfg.vocab_size, cfg.channels, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_dim,
            cfg.max_seq_len, cfg.use_scaled_rope, cfg.rope_theta) == (V, C, L, NH, NKV, I, MAXT, True, 10000.0)
    assert (cfg.multiple_of, cfg.ffn_dim_multiplier) == (32, np.float32(0.9))  # 160's 2^5; int(0.9 * 170) -> 160
    p = views(params, param_shapes(cfg))
    assert np.array_equal(p["wte"], p["wlmhead"]) == model.config.tie_word_embeddings
    bf16 = read_model(tmp_path / f"{STEM}_bf16.bin")[1]
    np.testing.assert_allclose(bf16, params, rtol=2 ** -8, atol=0)  # the bf16 file: the same, rounded
    x = tokens()
    want = hf_logits(model, x)
    assert np.abs(want).max() > 1.0  # logits of order 1: the tolerance means something
    # both fp32, sums in different orders: ~1e-7 relative per op through 2 layers, 3e-6 at most on logits
    # up to 4; 1e-5 leaves room, while a misplaced q/k row, a swapped gate or a missing RoPE scaling
    # moves them by 1e-2 and more
    np.testing.assert_allclose(llmc_logits(tmp_path / f"{STEM}.bin", x), want, rtol=1e-5, atol=1e-5)


def test_to_hf_round_trips_and_loads(hf_dirs, tmp_path):
    model, folder = hf_dirs[0], hf_dirs[1]
    assert run(folder, "-o", tmp_path / "a").exit_code == 0
    result = run("--to-hf", tmp_path / "a" / f"{STEM}.bin", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert back.config.tie_word_embeddings == model.config.tie_word_embeddings
    x = tokens()
    np.testing.assert_array_equal(hf_logits(back, x), hf_logits(model, x))  # the very same fp32 weights
    assert run(tmp_path / "hf", "-o", tmp_path / "b").exit_code == 0
    for name in (f"{STEM}.bin", f"{STEM}_bf16.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_any_llmc_file_round_trips_byte_identically(tied, tmp_path):
    """A training run's file: multiple_of 16 and multiplier 1.0, which intermediate_size alone would not
    give back (config.json's "llmc" keeps them), and wlmhead apart from wte unless tied."""
    cfg = config_from_descriptor("llama3:d2:c32:h4:kv2:t32:v101:m16")
    params = random_init(cfg, 3)
    p = views(params, param_shapes(cfg))
    if tied:
        p["wlmhead"][...] = p["wte"]
    write_model(tmp_path / "model.bin", cfg, params)
    assert run("--to-hf", tmp_path / "model.bin", tmp_path / "hf").exit_code == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["tie_word_embeddings"] == tied and ("lm_head.weight" in hf_keys(tmp_path / "hf")) != tied
    assert config_from_hf({**hf, "llmc": None})[0].multiple_of == 32  # derived: 96's largest 2^k
    result = run(tmp_path / "hf", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "llama3.1_L2H4KV2C32.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def hf_keys(folder) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return set(f.keys())


def test_named_shapes_get_train_llama3_py_names_and_headers():
    """Llama-3.2-1B's config.json (factor 32 RoPE: llm.c uses 8, and says so) gives train_llama3.py's
    llama3.2_1B header: multiple_of 1024, ffn_dim_multiplier 1.4."""
    hf = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
          "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": True,
          "rope_scaling": {**LLMC_ROPE_SCALING, "factor": 32.0}}
    notes = []
    cfg, tied = config_from_hf(hf, echo=notes.append)
    assert tied and file_stem(cfg) == "llama3.2_1B" and len(notes) == 1 and "factor 32" in notes[0]
    want = NAMED_SHAPES["llama3.2-1b"]
    assert (cfg.multiple_of, cfg.ffn_dim_multiplier, cfg.version_minor) == (1024, want.ffn_dim_multiplier, 2)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn"])
def test_other_rope_scaling_fails_in_one_line(hf_dirs, rope_type, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    hf = json.loads((hf_dirs[1] / "config.json").read_text())
    hf.pop("rope_parameters", None)
    hf["rope_scaling"] = {"rope_type": rope_type, "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "model.safetensors").write_bytes((hf_dirs[1] / "model.safetensors").read_bytes())
    one_line_error(run(folder, "-o", tmp_path / "out"), rope_type, "llama3")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bias", ["qkvb", "lnfb"])
def test_non_zero_bias_slots_fail_in_one_line_on_to_hf(bias, tmp_path):
    cfg = config_from_descriptor("llama3:d1:c32:h4:kv2:t16:v77:m16")
    params = random_init(cfg, 1)
    views(params, param_shapes(cfg))[bias][0] = 0.5
    write_model(tmp_path / "model.bin", cfg, params)
    one_line_error(run("--to-hf", tmp_path / "model.bin", tmp_path / "hf"), bias, "no biases")
    assert not (tmp_path / "hf").exists()

"""core/llama_config.py: llm.c's Llama 3 shapes (train_llama3.py's MODEL_DICT and MLP, train_llama3.cu's
parameter table), descriptors, FLOPs and the random init."""

import math

import numpy as np
import pytest

from llmc.core import llama_config
from llmc.core.errors import LlmcError
from llmc.core.llama_config import LlamaConfig, config_from_descriptor, num_parameters, param_shapes, random_init

# train_llama3.py's MODEL_DICT: name -> (n_layer, n_head, n_embd, ffn_dim_multiplier, version)
MODEL_DICT = {"llama3.1-8b": (32, 32, 4096, 1.3, (3, 1)), "llama3.2-3b": (28, 24, 3072, 1.0, (3, 2)),
              "llama3.2-1b": (16, 32, 2048, 1.4, (3, 2))}
HF_INTERMEDIATE = {"llama3.1-8b": 14336, "llama3.2-3b": 8192, "llama3.2-1b": 8192}  # the models' config.json
TINY = LlamaConfig(max_seq_len=16, vocab_size=37, num_layers=2, num_heads=4, num_kv_heads=2, channels=16,
                   multiple_of=32, ffn_dim_multiplier=1.3)


def mlp_hidden(n_embd: int, ffn_dim_multiplier: float, multiple_of: int) -> int:
    """train_llama3.py's MLP.__init__, step by step."""
    hidden = 4 * n_embd
    hidden = int(2 * hidden / 3)
    hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def offsets(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    out, o = {}, 0
    for name, shape in param_shapes(cfg).items():
        out[name] = (o, o + math.prod(shape))
        o += math.prod(shape)
    return out


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("name", MODEL_DICT)
def test_named_shapes_are_model_dict(name):
    L, NH, C, mult, version = MODEL_DICT[name]
    cfg = config_from_descriptor(name)
    assert (cfg.num_layers, cfg.num_heads, cfg.channels, cfg.num_kv_heads) == (L, NH, C, 8)
    assert (cfg.max_seq_len, cfg.vocab_size, cfg.padded_vocab_size, cfg.multiple_of) == (8192, 128256, 128256, 1024)
    assert cfg.ffn_dim_multiplier == float(np.float32(mult))
    assert (cfg.norm_eps, cfg.rope_theta, cfg.use_scaled_rope) == (float(np.float32(1e-5)), 500000.0, True)
    assert (cfg.version_major, cfg.version_minor) == version
    assert cfg.hidden_dim == mlp_hidden(C, mult, 1024) == HF_INTERMEDIATE[name]


def test_param_shapes_follow_train_llama3_cu():
    H, QKV = TINY.hidden_dim, (4 + 2 * 2) * 4
    assert H == mlp_hidden(16, 1.3, 32) == 64
    assert list(param_shapes(TINY).items()) == [
        ("wte", (37, 16)), ("wlmhead", (37, 16)), ("ln1w", (2, 16)), ("ln1b", (2, 16)), ("qkvw", (2, QKV, 16)),
        ("qkvb", (2, QKV)), ("attprojw", (2, 16, 16)), ("attprojb", (2, 16)), ("ln2w", (2, 16)), ("ln2b", (2, 16)),
        ("fcw", (2, 2 * H, 16)), ("fcb", (2, 2 * H)), ("fcprojw", (2, 16, H)), ("fcprojb", (2, 16)),
        ("lnfw", (16,)), ("lnfb", (16,))]
    # a matrix (per layer): embeddings and matmul weights decay, RMSNorm weights and the bias slots do not
    assert set(llama_config.DECAYED_PARAMS) == {"wte", "wlmhead", "qkvw", "attprojw", "fcw", "fcprojw"}


def test_param_count_of_llama_3_2_1b():
    # Hugging Face's count for Llama-3.2-1B (tied embeddings), plus llm.c's separate lm_head copy and its
    # zero bias slots: ln1b, qkvb (48 heads of 64), attprojb, ln2b, fcb (2 x 8192), fcprojb per layer, and lnfb
    hf_params, V, C, L = 1_235_814_400, 128256, 2048, 16
    biases = L * (C + 48 * 64 + C + C + 2 * 8192 + C) + C
    assert num_parameters(config_from_descriptor("llama3.2-1b")) == hf_params + V * C + biases == 1_498_927_104


def test_flops_per_token_counts_matmul_weights_and_attention():
    cfg, T = config_from_descriptor("llama3.2-1b"), 1024
    V, C, L, H, KV = 128256, 2048, 16, 8192, 8 * 64
    matmuls = V * C + L * (C * C + 2 * KV * C + C * C + 3 * H * C)  # lm_head, q, k and v, o, SwiGLU's three
    assert llama_config.flops_per_token(cfg, T) == 6 * matmuls + 6 * L * C * T


def test_describe_rows():
    rows = dict(llama_config.describe(config_from_descriptor("llama3.2-1b")))
    assert rows["num_kv_heads NKV"] == 8 and rows["ffn hidden_dim"] == 8192 and rows["padded_vocab_size Vp"] == 128256
    assert rows["num_parameters"] == 1_498_927_104 and rows["rope_theta"] == "500000 (scaled)"
    assert all(len(k) <= 21 for k in rows)  # the start-up table's first column


# ----------------------------------------------------------------------------- config checks

def test_float_fields_keep_their_fp32_values():
    cfg = LlamaConfig(64, 100, 1, 2, 1, 8, 16, 1.4, norm_eps=1e-6, rope_theta=10000.5, use_scaled_rope=0)
    assert cfg.ffn_dim_multiplier == float(np.float32(1.4)) and cfg.norm_eps == float(np.float32(1e-6))
    assert cfg.rope_theta == 10000.5 and cfg.use_scaled_rope is False


@pytest.mark.parametrize("change, message", [
    (dict(channels=18, num_heads=4), "not divisible by heads"),
    (dict(num_kv_heads=3), "not divisible by kv heads"),
    (dict(channels=12, num_heads=4, num_kv_heads=1), "head size 3 is odd"),
    (dict(num_layers=0), "non-positive size"),
    (dict(multiple_of=-1), "non-positive size"),
    (dict(ffn_dim_multiplier=0.0), "ffn_dim_multiplier"),
    (dict(norm_eps=float("nan")), "norm_eps"),
    (dict(rope_theta=float("inf")), "rope_theta"),
    (dict(ffn_dim_multiplier=1e-3), "no SwiGLU hidden units"),
])
def test_impossible_shapes_are_refused(change, message):
    fields = dict(max_seq_len=16, vocab_size=37, num_layers=2, num_heads=4, num_kv_heads=2, channels=16,
                  multiple_of=1, ffn_dim_multiplier=1.0) | change
    with pytest.raises(LlmcError, match=message):
        LlamaConfig(**fields)


# ----------------------------------------------------------------------------- descriptors

def test_descriptor_with_llama_3_2_1b_sizes_has_its_shape():
    cfg = config_from_descriptor("llama3:d16:c2048:h32:kv8:v128256:f1.5")
    assert cfg.hidden_dim == 8192 and cfg.multiple_of == 256 and cfg.max_seq_len == 8192
    assert param_shapes(cfg) == param_shapes(config_from_descriptor("llama3.2-1b"))


def test_descriptor_defaults_and_options():
    cfg = config_from_descriptor("llama3:d4:c128:h4:kv2")
    assert (cfg.num_layers, cfg.channels, cfg.num_heads, cfg.num_kv_heads) == (4, 128, 4, 2)
    assert (cfg.max_seq_len, cfg.vocab_size, cfg.ffn_dim_multiplier, cfg.multiple_of) == (8192, 128256, 1.0, 256)
    assert (cfg.norm_eps, cfg.rope_theta, cfg.use_scaled_rope) == (float(np.float32(1e-5)), 500000.0, True)
    assert cfg.hidden_dim == mlp_hidden(128, 1.0, 256) == 512
    cfg = config_from_descriptor("llama3:d2:c64:h4:kv1:t32:v100:f1.3:m32")
    assert (cfg.max_seq_len, cfg.vocab_size, cfg.num_kv_heads, cfg.multiple_of) == (32, 100, 1, 32)
    assert cfg.hidden_dim == mlp_hidden(64, 1.3, 32) == 224
    assert config_from_descriptor("llama3:v100:kv1:h4:c64:d2:t32:m32:f1.3") == cfg  # any order


@pytest.mark.parametrize("descriptor", [
    "d12", "gpt2:d12", "d4:c128:h4:t128", "gpt3:c768", "model.bin", "", "llama3", "llama3.2-1B", "llama3.2-2b",
    "llama3:d4:c128:h4",  # kv heads missing
    "llama3:d4:c128:kv2",  # heads missing
    "llama3:d4:c128:h4:kv2:x3", "llama3:d4:c128:h4:kv2:t", "llama3:d4:d5:c128:h4:kv2", "llama3:d4:c128:h4:kv2:fabc",
    "llama3:d4:c128:h4:kv2:t1.5", "llama3:d4:c128:h4:kv2:", "llama:d4:c128:h4:kv2", "llama3:d4:c128:h4:k2",
])
def test_other_syntax_is_refused(descriptor):
    with pytest.raises(LlmcError, match="unsupported Llama 3 descriptor") as e:
        config_from_descriptor(descriptor)
    assert "\n" not in str(e.value)


def test_descriptor_with_an_impossible_shape_says_why():
    with pytest.raises(LlmcError, match="not divisible by kv heads"):
        config_from_descriptor("llama3:d4:c128:h4:kv3")
    with pytest.raises(LlmcError, match="ffn_dim_multiplier"):
        config_from_descriptor("llama3:d4:c128:h4:kv2:fnan")


# ----------------------------------------------------------------------------- random init

def test_random_init_shapes_and_stds():
    cfg = config_from_descriptor("llama3:d4:c64:h4:kv2:t32:v300:m64")
    params = random_init(cfg)
    assert params.dtype == np.float32 and params.shape == (num_parameters(cfg),)
    o = offsets(cfg)
    part = {name: params[lo:hi] for name, (lo, hi) in o.items()}
    for name in ("ln1w", "ln2w", "lnfw"):
        assert (part[name] == 1).all()
    for name in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        assert not part[name].any()
    for name, std in (("wte", 0.02), ("wlmhead", 0.02), ("qkvw", 0.02), ("fcw", 0.02),
                      ("attprojw", 0.02 / math.sqrt(8)), ("fcprojw", 0.02 / math.sqrt(8))):
        assert abs(part[name].mean()) < 0.1 * std
        assert part[name].std() == pytest.approx(std, rel=0.05), name
    assert not np.array_equal(part["wte"], part["wlmhead"])  # separate draws, not tied


def test_random_init_is_seeded():
    np.testing.assert_array_equal(random_init(TINY), random_init(TINY, 42))
    assert not np.array_equal(random_init(TINY, 1), random_init(TINY, 2))


def test_random_init_matches_torch_in_module_order():
    """torch.manual_seed(42) and normal_ over train_llama3.py's LLaMA modules in order: wte, per layer
    c_attn, attn.c_proj, c_fc, c_fc2, mlp.c_proj, then lm_head. Sizes that are not multiples of 16 take
    torch's redo-the-last-16 path."""
    torch = pytest.importorskip("torch")
    cfg = LlamaConfig(16, 37, 2, 3, 1, 18, 2, 1.1)  # V*C = 666, QKV*C = 540, C*C = 324, H*C = 52*18 = 936
    C, H, QKV, L = 18, cfg.hidden_dim, cfg.qkv_channels, 2
    assert all(n % 16 for n in (37 * C, QKV * C, C * C, H * C))
    gen = torch.Generator().manual_seed(42)

    def normal(*shape, std=0.02):
        return torch.empty(*shape).normal_(0.0, std, generator=gen).numpy()

    res = 0.02 / math.sqrt(2 * L)
    wte = normal(37, C)
    layers = [(normal(QKV, C), normal(C, C, std=res), normal(H, C), normal(H, C), normal(C, H, std=res))
              for _ in range(L)]
    lm_head = normal(37, C)
    got = random_init(cfg)
    o = offsets(cfg)
    want = {"wte": wte, "wlmhead": lm_head, "qkvw": np.stack([l[0] for l in layers]),
            "attprojw": np.stack([l[1] for l in layers]), "fcw": np.stack([np.concatenate(l[2:4]) for l in layers]),
            "fcprojw": np.stack([l[4] for l in layers])}
    for name, w in want.items():
        lo, hi = o[name]
        np.testing.assert_allclose(got[lo:hi], w.reshape(-1), rtol=1e-5, atol=2e-7, err_msg=name)

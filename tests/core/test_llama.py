"""Llama 3 (core/llama.py) on the NumPy backend against Hugging Face's LlamaForCausalLM: logits, loss
and every gradient for GQA ratios 1, 2 and 4, head sizes 16 to 128, RoPE with and without Llama 3.1's
scaling, tied and untied embeddings and each recompute setting; ten AdamW steps; RoPE's table against
train_llama3.py's formula; the training loop's checkpoints, exact resume and ZeRO-1; the KV-cache model
and generation.

The reference runs in float64 (HF's RoPE table stays fp32, as ours), so the tolerances measure llmc's
fp32 error alone: 1e-4 relative, as tests/core/test_model.py holds GPT-2 to.
"""

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llmc.core import checkpoint, cpu, families  # noqa: E402
from llmc.core.errors import LlmcError  # noqa: E402
from llmc.core.flat_model import views  # noqa: E402
from llmc.core.hf_llama import hf_to_llmc, llmc_to_hf  # noqa: E402
from llmc.core.formats import write_shard  # noqa: E402
from llmc.core.llama import KVCacheModel, Llama, rope_table  # noqa: E402
from llmc.core.llama_config import DECAYED_PARAMS, LlamaConfig, param_shapes  # noqa: E402
from llmc.core.llama_formats import LLAMA3_MAGIC, read_model  # noqa: E402
from llmc.core.primitives import AdamW  # noqa: E402
from llmc.core.rand import XorShift  # noqa: E402
from llmc.core.sample import generate  # noqa: E402
from llmc.tests.core.test_checkpoint import config, train  # noqa: E402
from llmc.tests.core.test_model import random_batch  # noqa: E402  (any family's config: it reads vocab_size)


def llama(L: int, NH: int, NKV: int, C: int, V: int, maxT: int, theta: float = 500000.0, m: int = 16) -> LlamaConfig:
    return LlamaConfig(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH, num_kv_heads=NKV, channels=C,
                       multiple_of=m, ffn_dim_multiplier=1.0, rope_theta=theta)


# (config, B, T, tied): GQA ratios NH/NKV 1, 2, 4; head sizes 16, 32, 48, 64, 128; V never a multiple of
# 128; T odd but once, T = max_seq_len = 64 at theta 10000, where Llama 3.1's scaling moves the logits by ~1e-2
CASES = [
    (llama(2, 4, 4, 64, 101, 16), 2, 7, False),
    (llama(2, 4, 2, 128, 250, 16), 2, 13, True),
    (llama(1, 4, 1, 512, 77, 16, m=64), 1, 9, True),
    (llama(2, 2, 1, 96, 130, 16), 3, 11, False),
    (llama(2, 2, 1, 128, 101, 64, theta=10000.0), 2, 64, False),
    (llama(2, 8, 2, 128, 99, 32), 2, 5, True),
]
IDS = ["NKV4-HS16", "NKV2-HS32-tied", "NKV1-HS128-tied", "NKV1-HS48", "NKV1-HS64-T64", "NH8-NKV2-HS16-tied"]


def random_params(cfg: LlamaConfig, seed: int, tied: bool = False) -> np.ndarray:
    """Matrices N(0, 1/C_in) (logits of order 1), RMSNorm weights near 1; the bias slots random too (the
    model must never read them). Tied: wlmhead a copy of wte."""
    rng = np.random.default_rng(seed)
    p = {name: rng.normal(0.0, 1.0 / math.sqrt(shape[-1]), shape) for name, shape in param_shapes(cfg).items()}
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name] = 1.0 + rng.normal(0.0, 0.1, p[name].shape)
    if tied:
        p["wlmhead"] = p["wte"]
    return np.concatenate([a.reshape(-1) for a in p.values()]).astype(np.float32)


# ----------------------------------------------------------------------------- llm.c's layout <-> Hugging Face's

def hf_model(cfg: LlamaConfig, params: np.ndarray, tied: bool):
    """float64 LlamaForCausalLM holding llm.c's parameters (tied: wte is both embedding and lm_head),
    mapped by core/hf_llama.py as `llmc export-weights --to-hf` maps them."""
    rope = ({"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192} if cfg.use_scaled_rope
            else {"rope_type": "default", "rope_theta": cfg.rope_theta})
    hc = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.channels, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=2 * 8192, rms_norm_eps=cfg.norm_eps, rope_parameters=rope, tie_word_embeddings=tied,
        attention_bias=False, mlp_bias=False, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(hc).double()
    state = {name: torch.tensor(t, dtype=torch.float64) for name, t in llmc_to_hf(cfg, params, tied).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


def hf_grads(model, cfg: LlamaConfig, tied: bool) -> np.ndarray:
    """The HF model's gradients in llm.c's flat layout: zero in the bias slots; tied, the shared
    embedding's gradient in both wte and wlmhead."""
    grads = {name: t.grad.numpy() for name, t in model.named_parameters()}
    return hf_to_llmc(cfg, tied, grads.__getitem__, dtype=np.float64)


def hf_loss(model, x: np.ndarray, y: np.ndarray):
    """(logits (B, T, V), mean loss) of predicting y from x (HF's own labels= would shift them again)."""
    logits = model(torch.from_numpy(x.astype(np.int64))).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(y.astype(np.int64)).reshape(-1))
    return logits, loss


# ----------------------------------------------------------------------------- forward, backward

def seeded_random_cases(n: int, seed: int = 2026) -> list[tuple[LlamaConfig, int, int, bool, bool]]:
    """Configs outside the fixed list: GQA ratio, head size, depth, vocab, T, tying and RoPE scaling drawn
    from a seeded generator (new draws only when the seed changes, so a failure is reproducible)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        nkv, ratio, hs = int(rng.choice([1, 2])), int(rng.choice([1, 2, 4])), int(rng.choice([16, 32, 48, 64, 128]))
        maxT = int(rng.choice([16, 32]))
        V = int(rng.integers(50, 400))
        V += V % 128 == 0
        cfg = llama(int(rng.integers(1, 3)), nkv * ratio, nkv, nkv * ratio * hs, V, maxT,
                    theta=float(rng.choice([10000.0, 500000.0])))
        cases.append((cfg, int(rng.integers(1, 4)), int(rng.integers(2, maxT + 1)), bool(rng.integers(2)),
                      bool(rng.integers(2))))
    return cases


@pytest.mark.parametrize("cfg,B,T,tied", CASES, ids=IDS)
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "unscaled"])
def test_forward_backward_matches_transformers(cfg, B, T, tied, scaled):
    check_against_transformers(cfg, B, T, tied, scaled)


@pytest.mark.parametrize("cfg,B,T,tied,scaled", seeded_random_cases(4))
def test_seeded_random_configs_match_transformers(cfg, B, T, tied, scaled):
    check_against_transformers(cfg, B, T, tied, scaled)


def check_against_transformers(cfg: LlamaConfig, B: int, T: int, tied: bool, scaled: bool) -> None:
    """Logits, loss and every gradient of the Llama model (recompute 0, 1, 2; after a step on another batch)
    against transformers' LlamaForCausalLM on the same weights."""
    cfg = dataclasses.replace(cfg, use_scaled_rope=scaled)
    params = random_params(cfg, seed=B * 100 + T, tied=tied)
    rng = np.random.default_rng(T)
    stale = random_batch(cfg, B, T, rng)
    x, y = random_batch(cfg, B, T, rng)
    ref = hf_model(cfg, params, tied)
    want_logits, want_loss = hf_loss(ref, x, y)
    want_loss.backward()
    want_grads = views(hf_grads(ref, cfg, tied), param_shapes(cfg))
    for recompute in (0, 1, 2):
        model = Llama(cfg, cpu, params, B, T, recompute=recompute)
        # a first step on another batch leaves stale activations and gradients behind
        model.set_batch(*stale)
        model.forward(dloss=1.0 / (B * T))
        model.backward()

        model.set_batch(x, y)
        model.forward()  # no dloss: logits stay logits
        np.testing.assert_allclose(model.acts["logits"], want_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
        assert model.mean_loss() == pytest.approx(want_loss.item(), abs=1e-5)

        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
        g = views(model.grads.copy(), param_shapes(cfg))
        for bias in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
            assert not g[bias].any(), bias  # bias-free: the slots get no gradient
        if tied:  # one tensor in HF, two slots in llm.c's file: its gradient is theirs summed
            g["wte"] += g["wlmhead"]
            g["wlmhead"][...] = g["wte"]
        for name, want in want_grads.items():  # to 1e-4 of each tensor's largest gradient
            atol = 1e-4 * max(float(np.abs(want).max()), 1e-6)
            np.testing.assert_allclose(g[name], want, rtol=1e-4, atol=atol, err_msg=f"d{name}")


def test_model_rejects_bad_settings():
    cfg, B, _, _ = CASES[0]
    params = random_params(cfg, 1)
    with pytest.raises(LlmcError, match="max_seq_len"):
        Llama(cfg, cpu, params, B, cfg.max_seq_len + 1)
    with pytest.raises(LlmcError, match="recompute"):
        Llama(cfg, cpu, params, B, 4, recompute=3)


# ----------------------------------------------------------------------------- RoPE's table

def precompute_freqs_cis(dim: int, end: int, theta: float, use_scaled: bool) -> tuple[np.ndarray, np.ndarray]:
    """train_llama3.py's precompute_freqs_cis and apply_scaling, as written there (fp32 torch); (table, angles)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, dtype=torch.float32)
    if use_scaled:
        scale_factor, low_freq_factor, high_freq_factor, old_context_len = 8, 1, 4, 8192
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        new_freqs = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < high_freq_wavelen:
                new_freqs.append(freq)
            elif wavelen > low_freq_wavelen:
                new_freqs.append(freq / scale_factor)
            else:
                smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
                new_freqs.append((1 - smooth) * freq / scale_factor + smooth * freq)
        freqs = torch.tensor(new_freqs, dtype=freqs.dtype)
    freqs = torch.outer(t, freqs)
    return torch.view_as_real(torch.polar(torch.ones_like(freqs), freqs)).numpy(), freqs.numpy()


@pytest.mark.parametrize("head_size", [16, 48, 64, 128])
@pytest.mark.parametrize("theta", [500000.0, 10000.0])
@pytest.mark.parametrize("use_scaled", [True, False])
def test_rope_table_is_train_llama3_py_precompute_freqs_cis(head_size, theta, use_scaled):
    """Over train_llama3.py's 2 * 8192 positions. Both sides round freq and then the angle t * freq to
    fp32; the reference's pow and its fp32 blend of the middle frequencies (wavelen, smooth, the blend)
    round a few times more than rope_table's exact freq rounded once. So the angles may differ by some
    four fp32 roundings, 4 * 2^-23 = 5e-7 of the angle, and cos and sin by as much (plus their own rounding)."""
    want, angles = precompute_freqs_cis(head_size, 2 * 8192, theta, use_scaled)
    got = rope_table(head_size, 2 * 8192, theta, use_scaled)
    assert got.shape == want.shape == (2 * 8192, head_size // 2, 2) and got.dtype == np.float32
    assert (np.abs(got - want) <= 5e-7 * angles[..., None] + 2e-7).all()
    if use_scaled:  # the scaling slows exactly the wavelengths beyond 8192 / 4 positions
        plain = rope_table(head_size, 2 * 8192, theta, False)
        wavelen = 2 * math.pi * theta ** (np.arange(0, head_size, 2) / head_size)
        assert (np.abs(got - plain).max(axis=(0, 2)) > 0).tolist() == (wavelen > 2048).tolist()


# ----------------------------------------------------------------------------- AdamW

def test_ten_adamw_steps_match_torch():
    """llmc's update against torch.optim.AdamW on the HF model: betas 0.9/0.95, eps 1e-8, weight decay
    on the 2-D weights only (train_llama3.py's configure_optimizers), plain steps; two batches in turn.
    Untied: llm.c's file keeps wte and wlmhead apart, so a tied HF model parts from it at the first step."""
    cfg, B, T, _ = CASES[1]
    lr, wd, steps = 1e-2, 0.1, 10
    params = random_params(cfg, 3)
    model = Llama(cfg, cpu, params, B, T)
    ref = hf_model(cfg, params, tied=False)
    decayed = [t for t in ref.parameters() if t.dim() >= 2]
    others = [t for t in ref.parameters() if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    rng = np.random.default_rng(4)
    batches = [random_batch(cfg, B, T, rng) for _ in range(2)] * (steps // 2)
    losses, ref_losses = [], []
    for step, (x, y) in enumerate(batches, start=1):
        model.set_batch(x, y)
        model.zero_grad()
        model.forward(dloss=1.0 / (B * T))
        model.backward()
        losses.append(model.mean_loss())
        model.update(AdamW(lr=lr, weight_decay=wd), step=step)

        opt.zero_grad()
        _, loss = hf_loss(ref, x, y)
        loss.backward()
        ref_losses.append(loss.item())
        opt.step()
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-4)
    assert losses[-1] < losses[0] - 0.1  # it trained
    assert set(DECAYED_PARAMS) == {name for name, shape in param_shapes(cfg).items() if len(shape) == 3 or
                                   name in ("wte", "wlmhead")}  # a matrix per layer, or the embeddings
    p = views(model.params_host(), param_shapes(cfg))
    for bias in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        np.testing.assert_array_equal(p[bias], views(params, param_shapes(cfg))[bias])  # never updated


# ----------------------------------------------------------------------------- the loop, sampling

DESCRIPTOR = "llama3:d2:c32:h4:kv2:t32:v101:m16"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama_data")
    rng = np.random.default_rng(0)
    for i, n in enumerate((700, 500, 900)):  # shards of 10, 7 and 14 batches of B*T = 64
        write_shard(d / f"train_{i}.bin", rng.integers(0, 101, n))
    write_shard(d / "val.bin", rng.integers(0, 101, 600))
    return d


@pytest.mark.parametrize("recompute", [0, 2])
def test_the_loop_trains_checkpoints_and_resumes_bit_exactly(data, tmp_path, recompute):
    n = 16
    kw = dict(model=DESCRIPTOR, max_steps=n, total_batch=128, recompute=recompute)
    full, ref, _ = train(config(data, tmp_path / "full", **kw))
    assert ref.family.name == "llama3" and isinstance(ref.model, Llama)
    first, _, _ = train(config(data, tmp_path / "split", checkpoint_every=5, **kw), stop_at=n // 2)
    assert checkpoint.find_latest(tmp_path / "split") == n // 2
    model_file = checkpoint.model_path(tmp_path / "split", n // 2)
    assert np.fromfile(model_file, "<i4", count=1)[0] == LLAMA3_MAGIC
    assert read_model(model_file)[0] == families.load(DESCRIPTOR)[1]
    second, resumed, _ = train(config(data, tmp_path / "split", checkpoint_every=5, resume=1, **kw))
    np.testing.assert_array_equal(np.concatenate([first, second]), full)
    for name in ("params", "m", "v"):
        np.testing.assert_array_equal(getattr(resumed.model, name), getattr(ref.model, name))
    assert (tmp_path / "split" / "main.log").read_text() == (tmp_path / "full" / "main.log").read_text()


def test_two_ranks_with_zero_1_train_as_one_process(data):
    """-z 1 shards Llama's flat buffers as GPT-2's (tests/core/test_distributed.py's ranks as threads)."""
    from llmc.core.distributed import zero_shard
    from llmc.tests.core.test_distributed import config as rank_config, numbers, run_ranks

    kw = dict(model=DESCRIPTOR, train_data=str(data / "train_0.bin"), val_data=str(data / "val.bin"))
    (single,), (one_lines,) = run_ranks([rank_config(data, B=4, **kw)])
    ranks, lines = run_ranks([rank_config(data, num_processes=2, process_rank=r, zero_stage=1, **kw)
                              for r in range(2)])
    assert numbers(lines[0]) == pytest.approx(numbers(one_lines), rel=1e-5)
    n = single.model.params.size
    for r, t in enumerate(ranks):
        assert t.model.m.size == zero_shard(n, 2, r).size
        np.testing.assert_allclose(t.model.params, single.model.params, rtol=1e-3, atol=1e-4)


def test_two_ranks_with_zero_1_checkpoint_llm_c_shares_and_resume(data, tmp_path):
    """Llama's -z 1 state files hold llm.c's per-tensor shares (its 16-tensor file table, as GPT-2's) and resume
    exactly."""
    from llmc.core import checkpoint, families
    from llmc.tests.core.test_distributed import config as rank_config, llm_c_assemble, numbers, run_ranks

    kw = dict(model=DESCRIPTOR, train_data=str(data / "train_0.bin"), val_data=str(data / "val.bin"),
              zero_stage=1, checkpoint_every=2, num_processes=2)
    _, straight = run_ranks([rank_config(data, process_rank=r, output_dir=str(tmp_path / "a"), **kw) for r in range(2)])
    ranks, _ = run_ranks([rank_config(data, process_rank=r, output_dir=str(tmp_path / "b"), max_steps=2, **kw)
                          for r in range(2)])
    _, cfg, _ = families.load(DESCRIPTOR)
    shapes = param_shapes(cfg)
    n = ranks[0].model.params.size
    shares = [checkpoint.read_state(checkpoint.state_path(tmp_path / "b", 2, r), n // 2) for r in range(2)]
    full_m = llm_c_assemble([s.m for s in shares], shapes)
    for r, t in enumerate(ranks):  # each rank's contiguous shard of the whole m, as llm.c's shares assemble it
        np.testing.assert_array_equal(t.model.m[: t.model.update_range[1] - t.model.shard.start],
                                      full_m[t.model.shard.start: t.model.update_range[1]])
    _, resumed = run_ranks([rank_config(data, process_rank=r, output_dir=str(tmp_path / "b"), resume=1, **kw)
                            for r in range(2)])
    assert numbers(resumed[0]) == numbers([ln for ln in straight[0]
                                           if not ln.startswith(("step    1", "step    2"))])[1:]


@pytest.mark.parametrize("case", [0, 4, 5], ids=[IDS[0], IDS[4], IDS[5]])
def test_kv_cache_logits_equal_the_full_forward(case):
    cfg, _, T, _ = CASES[case]
    params = random_params(cfg, 7)
    x, _ = random_batch(cfg, 1, T, np.random.default_rng(8))
    model = Llama(cfg, cpu, params, 1, T)
    model.set_batch(x)
    model.forward(with_targets=False)
    full = model.acts["logits"][0]  # (T, V)
    cache = KVCacheModel(cfg, params, np, T)
    tokens = x[0].tolist()
    cuts = [0, 2, 3, T - 1, T]  # a prompt, a token, a chunk, a token
    for lo, hi in zip(cuts, cuts[1:]):
        np.testing.assert_allclose(cache.forward(tokens[lo:hi]), full[hi - 1], rtol=1e-4, atol=1e-5)
    cache.reset()
    np.testing.assert_allclose(cache.forward(tokens), full[-1], rtol=1e-4, atol=1e-5)
    # llmc sample's generation: the same tokens with the cache as re-running the prefix for each
    drawn = [list(generate(KVCacheModel, cfg, params, np, tokens[:3], T - 2, XorShift(1337), kv_cache=kv))
             for kv in (True, False)]
    assert drawn[0] == drawn[1] and len(drawn[0]) == T - 2
    # from narrower parameters (the GPU trainer's bf16; float16 here), widened a layer at a time
    narrow = params.astype(np.float16)
    np.testing.assert_array_equal(KVCacheModel(cfg, narrow, np, T).forward(tokens),
                                  KVCacheModel(cfg, narrow.astype(np.float32), np, T).forward(tokens))

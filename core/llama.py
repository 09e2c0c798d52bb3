"""Llama 3 written once against the primitive set (core/primitives.py): llm.c's llama3_forward and
llama3_backward (train_llama3.cu), for any backend; and KVCacheModel, the same forward for a few
positions at a time in fp32 (on NumPy or CuPy), which `llmc sample` and the mid-run samples generate with.

Beside GPT-2 (core/model.py) the block differs in four places: RMSNorm for layernorm, RoPE on the
queries and keys instead of a position embedding, grouped-query attention (NKV key/value heads for
NH query heads), and a SwiGLU MLP, c_proj(c_fc(x) * silu(c_fc2(x))) with c_fc and c_fc2 fused into
one fcw. The logits come from the untied lm_head (wlmhead, in wpe's slot of the file). Every matmul
is bias-free, as train_llama3.py's nn.Linear(bias=False): the file's bias slots stay zero, are never
read and get no gradient (so AdamW leaves them zero).

Flat parameters, gradients and optimizer state are core/flat_model.py's, as GPT-2's. Buffers carry
their shapes in comments: L layers, B batch, T time, C channels, V vocab (Llama 3 does not pad it),
NH query heads, NKV key/value heads, HS head size, QKV = (NH + 2*NKV)*HS, H the SwiGLU hidden size.
"""

import math
from types import ModuleType

import numpy as np

from llmc.core.distributed import Group
from llmc.core.flat_model import FlatModel, KVCache
from llmc.core.llama_config import DECAYED_PARAMS, LlamaConfig, param_shapes

# Llama 3.1's RoPE scaling (train_llama3.py apply_scaling): wavelengths beyond the original context's
# 8192 / LOW_FREQ_FACTOR turn SCALE_FACTOR times slower, those below 8192 / HIGH_FREQ_FACTOR as before,
# and the ones between blend the two
SCALE_FACTOR, LOW_FREQ_FACTOR, HIGH_FREQ_FACTOR, OLD_CONTEXT_LEN = 8.0, 1.0, 4.0, 8192


def rope_table(head_size: int, max_seq_len: int, theta: float, use_scaled: bool) -> np.ndarray:
    """freqs_cis (max_seq_len, head_size/2, 2) fp32, train_llama3.py's precompute_freqs_cis: for position t
    and channel pair i, the (cos, sin) of t * freq_i with freq_i = theta^(-2i/head_size), Llama 3.1's
    scaling applied when use_scaled. The exponent and each angle t * freq are fp32 as the reference computes
    them (at position 8000 an angle's fp32 rounding is 5e-4 rad: matching it matters more than exactness);
    the rest is computed exactly and rounded once."""
    exponent = np.arange(0, head_size, 2, dtype=np.float32) / np.float32(head_size)
    freqs = 1.0 / np.float64(theta) ** exponent.astype(np.float64)
    if use_scaled:
        wavelen = 2 * math.pi / freqs
        smooth = (OLD_CONTEXT_LEN / wavelen - LOW_FREQ_FACTOR) / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR)
        blended = (1 - smooth) * freqs / SCALE_FACTOR + smooth * freqs
        freqs = np.where(wavelen < OLD_CONTEXT_LEN / HIGH_FREQ_FACTOR, freqs,
                         np.where(wavelen > OLD_CONTEXT_LEN / LOW_FREQ_FACTOR, freqs / SCALE_FACTOR, blended))
    angles = np.outer(np.arange(max_seq_len, dtype=np.float32), freqs.astype(np.float32)).astype(np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


class Llama(FlatModel):
    """The training model. recompute 1 recomputes SwiGLU's output in the backward, 2 the RMSNorms' too,
    as train_llama3.cu; gelu_fusion is checked and unused (there is no GELU; train_llama3.cu takes -ge
    and ignores it too)."""

    def __init__(self, cfg: LlamaConfig, backend: ModuleType, params: np.ndarray, B: int, T: int,
                 recompute: int = 0, gelu_fusion: int = 2, master_weights: bool = True,
                 group: Group | None = None, zero_stage: int = 0, fp8: bool = False, inference: bool = False):
        super().__init__(cfg, backend, params, param_shapes(cfg), DECAYED_PARAMS, B, T, recompute=recompute,
                         gelu_fusion=gelu_fusion, master_weights=master_weights, group=group, zero_stage=zero_stage,
                         fp8=fp8, inference=inference)
        table = rope_table(cfg.head_size, cfg.max_seq_len, cfg.rope_theta, cfg.use_scaled_rope)
        self.freqs_cis = backend.to_device(table, np.float32)  # (maxT, HS/2, 2)
        self.acts = self._allocate_activations(backend.act_dtype)

    # ------------------------------------------------------------------ buffers
    def _allocate_activations(self, dt) -> dict:
        cfg, B, T = self.cfg, self.B, self.T
        L, C, V, NH, QKV, H = (cfg.num_layers, cfg.channels, cfg.vocab_size, cfg.num_heads, cfg.qkv_channels,
                               cfg.hidden_dim)
        # recomputed activations, and inputs the linear layers keep their own copies of, need one layer's buffer
        keeps = self.linears.keeps_input
        Lswiglu = 1 if self.recompute >= 1 or keeps("fcproj") else L
        Lln = 1 if self.recompute >= 2 or (keeps("qkv") and keeps("fc")) else L
        f32 = np.float32
        return self._zeros({
            "encoded": ((B, T, C), dt),
            "ln1": ((Lln, B, T, C), dt), "ln1_rstd": ((L, B, T), f32),
            "qkv": ((B, T, QKV), dt),  # before RoPE: only the step from the matmul to rope_forward needs it
            "qkvr": ((L, B, T, QKV), dt),  # after RoPE, what attention reads
            "atty": ((L, B, T, C), dt),
            "att_stats": ((L, *self.backend.attention_stats_shape(B, T, NH)), f32),
            "residual2": ((L, B, T, C), dt),
            "ln2": ((Lln, B, T, C), dt), "ln2_rstd": ((L, B, T), f32),
            "fch": ((L, B, T, 2 * H), dt),  # c_fc's and c_fc2's outputs side by side, before SwiGLU
            "fch_swiglu": ((Lswiglu, B, T, H), dt),
            "residual3": ((L, B, T, C), dt),
            "lnf": ((B, T, C), dt), "lnf_rstd": ((B, T), f32),
            "logits": ((B, T, V), dt),  # becomes dlogits in a training forward
            "losses": ((B, T), f32),
            # backward scratch
            "dresidual": ((B, T, C), dt), "dbtc": ((B, T, C), dt), "dbth": ((B, T, H), dt),
            "dbt2h": ((B, T, 2 * H), dt), "dqkvr": ((B, T, QKV), dt), "dqkv": ((B, T, QKV), dt),
        })

    # ------------------------------------------------------------------ forward
    def forward(self, with_targets: bool = True, dloss: float | None = None) -> None:
        """Forward on self.inputs. With targets, losses (B,T) are computed; with dloss, logits are
        replaced by dlogits ready for backward (the fused classifier)."""
        ops, lin, p, a, cfg = self.backend, self.linears, self.p, self.acts, self.cfg
        L, NH, NKV, eps = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.norm_eps
        ops.encoder_forward(a["encoded"], self.inputs, p["wte"], None)  # no wpe: RoPE places the tokens
        ops.rmsnorm_forward(self._kept("ln1", 0), a["ln1_rstd"][0], a["encoded"], p["ln1w"][0], eps)
        for l in range(L):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ln2, swiglu = self._kept("ln2", l), self._kept("fch_swiglu", l)
            lin.forward("qkv", l, a["qkv"], self._kept("ln1", l), p["qkvw"][l], None)
            ops.rope_forward(a["qkvr"][l], a["qkv"], self.freqs_cis, NH, NKV)
            ops.attention_forward(a["atty"][l], a["att_stats"][l], a["qkvr"][l], NH, NKV)
            lin.forward("attproj", l, a["residual2"][l], a["atty"][l], p["attprojw"][l], None, residual=residual)
            ops.rmsnorm_forward(ln2, a["ln2_rstd"][l], a["residual2"][l], p["ln2w"][l], eps)
            lin.forward("fc", l, a["fch"][l], ln2, p["fcw"][l], None)
            ops.swiglu_forward(swiglu, a["fch"][l])
            lin.forward("fcproj", l, a["residual3"][l], swiglu, p["fcprojw"][l], None, residual=a["residual2"][l])
            if l + 1 < L:
                ops.rmsnorm_forward(self._kept("ln1", l + 1), a["ln1_rstd"][l + 1], a["residual3"][l],
                                    p["ln1w"][l + 1], eps)
            else:
                ops.rmsnorm_forward(a["lnf"], a["lnf_rstd"], a["residual3"][l], p["lnfw"], eps)
        ops.matmul_forward(a["logits"], a["lnf"], p["wlmhead"], None)  # (B, T, V), untied lm_head
        if with_targets:
            ops.softmax_crossentropy(a["losses"], a["logits"], self.targets, cfg.vocab_size, dloss)

    # ------------------------------------------------------------------ backward
    def backward(self) -> None:
        """Accumulate parameter gradients from the dlogits a forward(dloss=...) left in logits."""
        ops, lin, p, g, a, cfg = self.backend, self.linears, self.p, self.g, self.acts, self.cfg
        L, NH, NKV, eps = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.norm_eps
        dresidual, dbtc, dbth, dbt2h, dqkvr, dqkv = (a[name] for name in
                                                     ("dresidual", "dbtc", "dbth", "dbt2h", "dqkvr", "dqkv"))
        dresidual.fill(0)
        ops.matmul_backward(dbtc, g["wlmhead"], None, a["logits"], a["lnf"], p["wlmhead"])
        # each residual-stream RMSNorm backward accumulates into dresidual, the gradient every block shares
        ops.rmsnorm_backward(dresidual, g["lnfw"], dbtc, a["residual3"][L - 1], p["lnfw"], a["lnf_rstd"])
        for l in reversed(range(L)):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ln1, ln2, swiglu = self._kept("ln1", l), self._kept("ln2", l), self._kept("fch_swiglu", l)
            if self.recompute >= 2:  # RMSNorm outputs were not kept
                ops.rmsnorm_forward(ln1, a["ln1_rstd"][l], residual, p["ln1w"][l], eps)
                ops.rmsnorm_forward(ln2, a["ln2_rstd"][l], a["residual2"][l], p["ln2w"][l], eps)
            if self.recompute >= 1:
                ops.swiglu_forward(swiglu, a["fch"][l])
            lin.backward("fcproj", l, dbth, g["fcprojw"][l], None, dresidual, swiglu, p["fcprojw"][l])
            ops.swiglu_backward(dbt2h, a["fch"][l], dbth)
            lin.backward("fc", l, dbtc, g["fcw"][l], None, dbt2h, ln2, p["fcw"][l])
            ops.rmsnorm_backward(dresidual, g["ln2w"][l], dbtc, a["residual2"][l], p["ln2w"][l], a["ln2_rstd"][l])
            lin.backward("attproj", l, dbtc, g["attprojw"][l], None, dresidual, a["atty"][l], p["attprojw"][l])
            ops.attention_backward(dqkvr, dbtc, a["qkvr"][l], a["atty"][l], a["att_stats"][l], NH, NKV)
            ops.rope_backward(dqkv, dqkvr, self.freqs_cis, NH, NKV)
            lin.backward("qkv", l, dbtc, g["qkvw"][l], None, dqkv, ln1, p["qkvw"][l])
            ops.rmsnorm_backward(dresidual, g["ln1w"][l], dbtc, residual, p["ln1w"][l], a["ln1_rstd"][l])
        ops.encoder_backward(g["wte"], None, dresidual, self.inputs)


# ----------------------------------------------------------------------------- inference

def _rmsnorm(xp, x, weight, eps):
    return x / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def _silu(xp, x):
    with np.errstate(over="ignore"):  # exp(-x) is inf for x < -88: silu's right 0
        return x / (1.0 + xp.exp(-x))


class KVCacheModel(KVCache):
    """Llama 3 inference over positions 0..length-1, caching each layer's NKV key/value heads (after RoPE,
    at their absolute positions)."""

    def __init__(self, cfg: LlamaConfig, params, xp: ModuleType, length: int):
        super().__init__(cfg, params, param_shapes(cfg), xp, length, cfg.num_kv_heads, cfg.head_size)
        table = xp.asarray(rope_table(cfg.head_size, length, cfg.rope_theta, cfg.use_scaled_rope))
        self.cos, self.sin = table[..., 0], table[..., 1]  # (length, HS/2)

    def _rope(self, x, start: int):
        """x (n, heads, HS) at positions start.. with each channel pair (x0, x1) turned by its angle."""
        xp = self.xp
        n = x.shape[0]
        cos, sin = self.cos[start:start + n, None], self.sin[start:start + n, None]  # (n, 1, HS/2)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return xp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1).reshape(x.shape)

    def _logits(self, idx, start: int):
        xp, w, cfg = self.xp, self.w, self.cfg
        L, NH, NKV, HS, H, eps = (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_size, cfg.hidden_dim,
                                  cfg.norm_eps)
        n = len(idx)
        x = self.p["wte"][idx].astype(np.float32)  # (n, C)
        for l in range(L):
            qkv = (_rmsnorm(xp, x, w("ln1w", l), eps) @ w("qkvw", l).T).reshape(n, NH + 2 * NKV, HS)
            qk = self._rope(qkv[:, :NH + NKV], start)
            q, k, v = qk[:, :NH], qk[:, NH:], qkv[:, NH + NKV:]
            y = self._attend(l, q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2), start)
            x = x + y @ w("attprojw", l).T
            h = _rmsnorm(xp, x, w("ln2w", l), eps) @ w("fcw", l).T  # (n, 2H): c_fc's, then c_fc2's
            x = x + (h[:, :H] * _silu(xp, h[:, H:])) @ w("fcprojw", l).T
        last = _rmsnorm(xp, x[-1], w("lnfw"), eps)  # only the last position's logits are needed
        return w("wlmhead") @ last  # (V,)

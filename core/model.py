"""GPT-2 written once against the primitive set (core/primitives.py): llm.c's gpt2_forward and
gpt2_backward, for any backend; and KVCacheModel, the same forward for a few positions at a time in
fp32 (on NumPy or CuPy), which `llmc sample` and the mid-run samples generate with.

Parameters, gradients and optimizer state each live in one flat buffer with named views into it
(llm.c's layout; core/flat_model.py, which Llama 3 shares), so the optimizer, clipping and
checkpointing are single passes. Activations are sized once for (B, T). Buffers carry their shapes in
comments: L layers, B batch, T time, C channels, Vp padded vocab, NH heads.
"""

from types import ModuleType

import numpy as np

from llmc.core.config import DECAYED_PARAMS, GELU_CUBIC, GELU_SCALE, LN_EPS, GPTConfig, param_shapes
from llmc.core.distributed import Group
from llmc.core.flat_model import FlatModel, KVCache


class GPT(FlatModel):
    def __init__(self, cfg: GPTConfig, backend: ModuleType, params: np.ndarray, B: int, T: int,
                 recompute: int = 0, gelu_fusion: int = 2, master_weights: bool = True,
                 group: Group | None = None, zero_stage: int = 0, fp8: bool = False, inference: bool = False):
        super().__init__(cfg, backend, params, param_shapes(cfg), DECAYED_PARAMS, B, T, recompute=recompute,
                         gelu_fusion=gelu_fusion, master_weights=master_weights, group=group, zero_stage=zero_stage,
                         fp8=fp8, inference=inference)
        self.acts = self._allocate_activations(backend.act_dtype)

    # ------------------------------------------------------------------ buffers
    def _allocate_activations(self, dt) -> dict:
        cfg, B, T = self.cfg, self.B, self.T
        L, C, Vp, NH = cfg.num_layers, cfg.channels, cfg.padded_vocab_size, cfg.num_heads
        # recomputed activations, and inputs the linear layers keep their own copies of, need one layer's buffer
        keeps = self.linears.keeps_input
        Lgelu = 1 if self.recompute >= 1 or keeps("fcproj") else L
        Lln = 1 if self.recompute >= 2 or (keeps("qkv") and keeps("fc")) else L
        f32 = np.float32
        shapes = {
            "encoded": ((B, T, C), dt),
            "ln1": ((Lln, B, T, C), dt), "ln1_mean": ((L, B, T), f32), "ln1_rstd": ((L, B, T), f32),
            "qkv": ((L, B, T, 3 * C), dt),
            "atty": ((L, B, T, C), dt),
            "att_stats": ((L, *self.backend.attention_stats_shape(B, T, NH)), f32),
            "residual2": ((L, B, T, C), dt),
            "ln2": ((Lln, B, T, C), dt), "ln2_mean": ((L, B, T), f32), "ln2_rstd": ((L, B, T), f32),
            "fch": ((L, B, T, 4 * C), dt),  # before GELU
            "fch_gelu": ((Lgelu, B, T, 4 * C), dt),
            "residual3": ((L, B, T, C), dt),
            "lnf": ((B, T, C), dt), "lnf_mean": ((B, T), f32), "lnf_rstd": ((B, T), f32),
            "logits": ((B, T, Vp), dt),  # becomes dlogits in a training forward
            "losses": ((B, T), f32),
            # backward scratch
            "dresidual": ((B, T, C), dt), "dbtc": ((B, T, C), dt), "dbt4c": ((B, T, 4 * C), dt),
        }
        return self._zeros(shapes)

    # ------------------------------------------------------------------ forward
    def forward(self, with_targets: bool = True, dloss: float | None = None) -> None:
        """Forward on self.inputs. With targets, losses (B,T) are computed; with dloss, logits are
        replaced by dlogits ready for backward (the fused classifier)."""
        ops, lin, p, a, cfg = self.backend, self.linears, self.p, self.acts, self.cfg
        L, NH = cfg.num_layers, cfg.num_heads
        ops.encoder_forward(a["encoded"], self.inputs, p["wte"], p["wpe"])
        ops.layernorm_forward(self._kept("ln1", 0), a["ln1_mean"][0], a["ln1_rstd"][0], a["encoded"], p["ln1w"][0], p["ln1b"][0])
        for l in range(L):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ln2, gelu = self._kept("ln2", l), self._kept("fch_gelu", l)
            lin.forward("qkv", l, a["qkv"][l], self._kept("ln1", l), p["qkvw"][l], p["qkvb"][l])
            ops.attention_forward(a["atty"][l], a["att_stats"][l], a["qkv"][l], NH)
            lin.forward("attproj", l, a["residual2"][l], a["atty"][l], p["attprojw"][l], p["attprojb"][l],
                        residual=residual)
            ops.layernorm_forward(ln2, a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l], p["ln2w"][l], p["ln2b"][l])
            if self.gelu_fusion >= 1:
                lin.forward("fc", l, gelu, ln2, p["fcw"][l], p["fcb"][l], pre_gelu=a["fch"][l])
            else:
                lin.forward("fc", l, a["fch"][l], ln2, p["fcw"][l], p["fcb"][l])
                ops.gelu_forward(gelu, a["fch"][l])
            lin.forward("fcproj", l, a["residual3"][l], gelu, p["fcprojw"][l], p["fcprojb"][l], residual=a["residual2"][l])
            if l + 1 < L:
                ops.layernorm_forward(self._kept("ln1", l + 1), a["ln1_mean"][l + 1], a["ln1_rstd"][l + 1],
                                    a["residual3"][l], p["ln1w"][l + 1], p["ln1b"][l + 1])
            else:
                ops.layernorm_forward(a["lnf"], a["lnf_mean"], a["lnf_rstd"], a["residual3"][l], p["lnfw"], p["lnfb"])
        ops.matmul_forward(a["logits"], a["lnf"], p["wte"], None)  # (B, T, Vp), tied weights
        if with_targets:
            ops.softmax_crossentropy(a["losses"], a["logits"], self.targets, cfg.vocab_size, dloss)

    # ------------------------------------------------------------------ backward
    def backward(self) -> None:
        """Accumulate parameter gradients from the dlogits a forward(dloss=...) left in logits."""
        ops, lin, p, g, a, cfg = self.backend, self.linears, self.p, self.g, self.acts, self.cfg
        L, NH = cfg.num_layers, cfg.num_heads
        dresidual, dbtc, dbt4c = a["dresidual"], a["dbtc"], a["dbt4c"]
        B, T, C = dbtc.shape
        dqkv = dbt4c.reshape(-1)[: B * T * 3 * C].reshape(B, T, 3 * C)  # shares the 4C scratch
        dresidual.fill(0)
        ops.matmul_backward(dbtc, g["wte"], None, a["logits"], a["lnf"], p["wte"])
        # each residual-stream layernorm backward also sums the projection bias gradient of the
        # residual add before it (the gradients of residual3 and residual2 are those biases' outputs')
        ops.layernorm_backward(dresidual, g["lnfw"], g["lnfb"], dbtc, a["residual3"][L - 1], p["lnfw"],
                             a["lnf_mean"], a["lnf_rstd"], dproj_bias=g["fcprojb"][L - 1])
        for l in reversed(range(L)):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ln1, ln2, gelu = self._kept("ln1", l), self._kept("ln2", l), self._kept("fch_gelu", l)
            if self.recompute >= 2:  # layernorm outputs were not kept
                ops.layernorm_forward(ln1, a["ln1_mean"][l], a["ln1_rstd"][l], residual, p["ln1w"][l], p["ln1b"][l])
                ops.layernorm_forward(ln2, a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l], p["ln2w"][l], p["ln2b"][l])
            if self.recompute >= 1:
                ops.gelu_forward(gelu, a["fch"][l])
            if self.gelu_fusion >= 2:
                lin.backward("fcproj", l, dbt4c, g["fcprojw"][l], None, dresidual, gelu, p["fcprojw"][l],
                             pre_gelu=a["fch"][l])
            else:
                lin.backward("fcproj", l, dbt4c, g["fcprojw"][l], None, dresidual, gelu, p["fcprojw"][l])
                ops.gelu_backward(dbt4c, a["fch"][l], dbt4c)
            lin.backward("fc", l, dbtc, g["fcw"][l], g["fcb"][l], dbt4c, ln2, p["fcw"][l])
            ops.layernorm_backward(dresidual, g["ln2w"][l], g["ln2b"][l], dbtc, a["residual2"][l], p["ln2w"][l],
                                 a["ln2_mean"][l], a["ln2_rstd"][l], dproj_bias=g["attprojb"][l])
            lin.backward("attproj", l, dbtc, g["attprojw"][l], None, dresidual, a["atty"][l], p["attprojw"][l])
            ops.attention_backward(dqkv, dbtc, a["qkv"][l], a["atty"][l], a["att_stats"][l], NH)
            lin.backward("qkv", l, dbtc, g["qkvw"][l], g["qkvb"][l], dqkv, ln1, p["qkvw"][l])
            ops.layernorm_backward(dresidual, g["ln1w"][l], g["ln1b"][l], dbtc, residual, p["ln1w"][l],
                                 a["ln1_mean"][l], a["ln1_rstd"][l], dproj_bias=g["fcprojb"][l - 1] if l else None)
        ops.encoder_backward(g["wte"], g["wpe"], dresidual, self.inputs)


# ----------------------------------------------------------------------------- inference

def _layernorm(xp, x, weight, bias):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + LN_EPS)
    return xc * rstd * weight + bias


def _gelu(xp, x):
    return 0.5 * x * (1.0 + xp.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


class KVCacheModel(KVCache):
    """GPT-2 inference over positions 0..length-1, caching each layer's keys and values."""

    def __init__(self, cfg: GPTConfig, params, xp: ModuleType, length: int):
        super().__init__(cfg, params, param_shapes(cfg), xp, length, cfg.num_heads, cfg.channels // cfg.num_heads)

    def _logits(self, idx, start: int):
        xp, p, w, cfg = self.xp, self.p, self.w, self.cfg
        L, NH, C, f32 = cfg.num_layers, cfg.num_heads, cfg.channels, np.float32
        n = len(idx)
        x = p["wte"][idx].astype(f32, copy=False) + p["wpe"][start:start + n].astype(f32, copy=False)  # (n, C)
        for l in range(L):
            qkv = _layernorm(xp, x, w("ln1w", l), w("ln1b", l)) @ w("qkvw", l).T + w("qkvb", l)  # (n, 3C)
            q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(n, NH, -1).transpose(1, 0, 2) for i in range(3))  # (NH, n, HS)
            x = x + self._attend(l, q, k, v, start) @ w("attprojw", l).T + w("attprojb", l)
            h = _gelu(xp, _layernorm(xp, x, w("ln2w", l), w("ln2b", l)) @ w("fcw", l).T + w("fcb", l))  # (n, 4C)
            x = x + h @ w("fcprojw", l).T + w("fcprojb", l)
        last = _layernorm(xp, x[-1], w("lnfw"), w("lnfb"))  # only the last position's logits are needed
        return p["wte"][: cfg.vocab_size].astype(f32, copy=False) @ last  # (V,), tied weights

"""GPT-2 written once against the primitive set (core/primitives.py): llm.c's gpt2_forward and
gpt2_backward, for any backend; and KVCacheModel, the same forward for a few positions at a time in
fp32 (on NumPy or CuPy), which `llmc sample` and the mid-run samples generate with.

Parameters, gradients and optimizer state each live in one flat buffer with named views into it
(llm.c's layout), so the optimizer, clipping and checkpointing are single passes. Activations are
sized once for (B, T). Buffers carry their shapes in comments: L layers, B batch, T time,
C channels, Vp padded vocab, NH heads.
"""

import math
from types import ModuleType

import numpy as np

from llmc.core.config import DECAYED_PARAMS, GELU_CUBIC, GELU_SCALE, LN_EPS, GPTConfig, param_shapes
from llmc.core.distributed import Group, SingleProcess, shard_pieces, whole, zero_shard
from llmc.core.errors import LlmcError
from llmc.core.primitives import AdamW


def views(flat, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Named views into one flat buffer, in llm.c's order."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[offset: offset + n].reshape(shape)
        offset += n
    return out


class GPT:
    def __init__(self, cfg: GPTConfig, backend: ModuleType, params: np.ndarray, B: int, T: int,
                 recompute: int = 0, gelu_fusion: int = 2, master_weights: bool = True,
                 group: Group | None = None, zero_stage: int = 0):
        if T > cfg.max_seq_len:
            raise LlmcError(f"sequence length T={T} exceeds the model's max_seq_len {cfg.max_seq_len}")
        if recompute not in (0, 1, 2) or gelu_fusion not in (0, 1, 2):
            raise LlmcError("recompute (-r) and gelu fusion (-ge) take 0, 1 or 2")
        self.cfg, self.backend, self.B, self.T = cfg, backend, B, T
        self.recompute, self.gelu_fusion = recompute, gelu_fusion
        if zero_stage not in (0, 1):
            raise LlmcError("-z takes 0 or 1 (ZeRO-1)")
        xp, dt = backend.xp, backend.act_dtype
        shapes = param_shapes(cfg)
        n = params.size
        # the optimizer state covers this rank's shard: all n with one process or -z 0 (gradients all-reduced),
        # 1/N with -z 1 (gradients reduce-scattered, parameters all-gathered through the padded flat buffers)
        self.group = group or SingleProcess()
        self.sharded = zero_stage == 1 and self.group.world > 1
        self.shard = zero_shard(n, self.group.world, self.group.rank) if self.sharded else whole(n)
        self.pieces = shard_pieces(shapes, self.shard)
        self.flat_params = backend.to_device(np.pad(params, (0, self.shard.padded - n)), dt)
        self.params = self.flat_params[:n]  # flat, llm.c order
        self.p = views(self.params, shapes)
        self.flat_grads = xp.zeros_like(self.flat_params)
        self.grads = self.flat_grads[:n]
        self.g = views(self.grads, shapes)
        self.shard_grads = self.flat_grads[self.shard.start: self.shard.stop]
        # fp32 optimizer state, allocated at the first update; master weights only when params are not fp32
        self.m = self.v = None
        self.master = backend.to_device(np.pad(params, (0, self.shard.padded - n))[self.shard.start: self.shard.stop],
                                        np.float32) if master_weights and dt != np.float32 else None
        self.acts = self._allocate_activations(xp, dt)
        self.norm_squared = xp.zeros(1, dtype=np.float32)
        # AdamW's flat range: the tensors' part of the shard (not the padding past the last tensor)
        self.update_range = (self.pieces[0][2], self.pieces[-1][3]) if self.pieces else (self.shard.start,) * 2
        self.decayed = self._decayed_spans()
        self.inputs = xp.zeros((B, T), dtype=np.int32)
        self.targets = xp.zeros((B, T), dtype=np.int32)

    # ------------------------------------------------------------------ buffers
    def _allocate_activations(self, xp, dt) -> dict:
        cfg, B, T = self.cfg, self.B, self.T
        L, C, Vp, NH = cfg.num_layers, cfg.channels, cfg.padded_vocab_size, cfg.num_heads
        Lgelu = 1 if self.recompute >= 1 else L  # recomputed activations keep one layer's buffer
        Lln = 1 if self.recompute >= 2 else L
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
        return {name: xp.zeros(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}

    def _ln(self, which: str, l: int):
        """Layer l's layernorm output buffer (shared by all layers under -r 2)."""
        buf = self.acts[which]
        return buf[l if buf.shape[0] > 1 else 0]

    def _gelu(self, l: int):
        buf = self.acts["fch_gelu"]
        return buf[l if buf.shape[0] > 1 else 0]

    # ------------------------------------------------------------------ forward
    def forward(self, with_targets: bool = True, dloss: float | None = None) -> None:
        """Forward on self.inputs. With targets, losses (B,T) are computed; with dloss, logits are
        replaced by dlogits ready for backward (the fused classifier)."""
        ops, p, a, cfg = self.backend, self.p, self.acts, self.cfg
        L, NH = cfg.num_layers, cfg.num_heads
        ops.encoder_forward(a["encoded"], self.inputs, p["wte"], p["wpe"])
        ops.layernorm_forward(self._ln("ln1", 0), a["ln1_mean"][0], a["ln1_rstd"][0], a["encoded"], p["ln1w"][0], p["ln1b"][0])
        for l in range(L):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            ops.matmul_forward(a["qkv"][l], self._ln("ln1", l), p["qkvw"][l], p["qkvb"][l])
            ops.attention_forward(a["atty"][l], a["att_stats"][l], a["qkv"][l], NH)
            ops.matmul_forward(a["residual2"][l], a["atty"][l], p["attprojw"][l], p["attprojb"][l], residual=residual)
            ops.layernorm_forward(self._ln("ln2", l), a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l],
                                p["ln2w"][l], p["ln2b"][l])
            if self.gelu_fusion >= 1:
                ops.matmul_forward(self._gelu(l), self._ln("ln2", l), p["fcw"][l], p["fcb"][l], pre_gelu=a["fch"][l])
            else:
                ops.matmul_forward(a["fch"][l], self._ln("ln2", l), p["fcw"][l], p["fcb"][l])
                ops.gelu_forward(self._gelu(l), a["fch"][l])
            ops.matmul_forward(a["residual3"][l], self._gelu(l), p["fcprojw"][l], p["fcprojb"][l],
                             residual=a["residual2"][l])
            if l + 1 < L:
                ops.layernorm_forward(self._ln("ln1", l + 1), a["ln1_mean"][l + 1], a["ln1_rstd"][l + 1],
                                    a["residual3"][l], p["ln1w"][l + 1], p["ln1b"][l + 1])
            else:
                ops.layernorm_forward(a["lnf"], a["lnf_mean"], a["lnf_rstd"], a["residual3"][l], p["lnfw"], p["lnfb"])
        ops.matmul_forward(a["logits"], a["lnf"], p["wte"], None)  # (B, T, Vp), tied weights
        if with_targets:
            ops.softmax_crossentropy(a["losses"], a["logits"], self.targets, cfg.vocab_size, dloss)

    # ------------------------------------------------------------------ backward
    def backward(self) -> None:
        """Accumulate parameter gradients from the dlogits a forward(dloss=...) left in logits."""
        ops, p, g, a, cfg = self.backend, self.p, self.g, self.acts, self.cfg
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
            ln1, ln2 = self._ln("ln1", l), self._ln("ln2", l)
            if self.recompute >= 2:  # layernorm outputs were not kept
                ops.layernorm_forward(ln1, a["ln1_mean"][l], a["ln1_rstd"][l], residual, p["ln1w"][l], p["ln1b"][l])
                ops.layernorm_forward(ln2, a["ln2_mean"][l], a["ln2_rstd"][l], a["residual2"][l], p["ln2w"][l], p["ln2b"][l])
            if self.recompute >= 1:
                ops.gelu_forward(self._gelu(l), a["fch"][l])
            if self.gelu_fusion >= 2:
                ops.matmul_backward(dbt4c, g["fcprojw"][l], None, dresidual, self._gelu(l), p["fcprojw"][l],
                                  pre_gelu=a["fch"][l])
            else:
                ops.matmul_backward(dbt4c, g["fcprojw"][l], None, dresidual, self._gelu(l), p["fcprojw"][l])
                ops.gelu_backward(dbt4c, a["fch"][l], dbt4c)
            ops.matmul_backward(dbtc, g["fcw"][l], g["fcb"][l], dbt4c, ln2, p["fcw"][l])
            ops.layernorm_backward(dresidual, g["ln2w"][l], g["ln2b"][l], dbtc, a["residual2"][l], p["ln2w"][l],
                                 a["ln2_mean"][l], a["ln2_rstd"][l], dproj_bias=g["attprojb"][l])
            ops.matmul_backward(dbtc, g["attprojw"][l], None, dresidual, a["atty"][l], p["attprojw"][l])
            ops.attention_backward(dqkv, dbtc, a["qkv"][l], a["atty"][l], a["att_stats"][l], NH)
            ops.matmul_backward(dbtc, g["qkvw"][l], g["qkvb"][l], dqkv, ln1, p["qkvw"][l])
            ops.layernorm_backward(dresidual, g["ln1w"][l], g["ln1b"][l], dbtc, residual, p["ln1w"][l],
                                 a["ln1_mean"][l], a["ln1_rstd"][l], dproj_bias=g["fcprojb"][l - 1] if l else None)
        ops.encoder_backward(g["wte"], g["wpe"], dresidual, self.inputs)

    # ------------------------------------------------------------------ optimizer
    def zero_grad(self) -> None:
        self.grads.fill(0)

    def reduce_gradients(self) -> None:
        """Average the accumulated gradients over the ranks: all of them (-z 0), or into this rank's
        shard (-z 1). Nothing to do for one process."""
        if self.sharded:
            self.group.reduce_scatter_mean(self.flat_grads)
        else:
            self.group.all_reduce_mean(self.grads)

    def compute_grad_norm(self) -> None:
        """Queue the squared global gradient norm: over this rank's shard, summed over the ranks when sharded."""
        self.backend.global_norm_squared(self.norm_squared, self.shard_grads)
        if self.sharded:
            self.group.all_reduce_sum(self.norm_squared)

    def grad_norm(self) -> float:
        """The norm compute_grad_norm queued (waits for it)."""
        return float(np.sqrt(self.backend.to_host(self.norm_squared)[0]))

    def update(self, hp: AdamW, *, step: int, grad_scale: float = 1.0, seed: int = 0,
               clip_to: float | None = None) -> None:
        """AdamW over this rank's shard in one call; weight decay only on the 2-D weights, as
        train_gpt2.cu. With clip_to, the gradients are clipped to that global norm on the device, from
        the norm compute_grad_norm queued (skipped where it is not finite). Sharded, the updated shards
        are then all-gathered into every rank's parameters."""
        xp = self.backend.xp
        if self.m is None:
            self.m = xp.zeros(self.shard.size, dtype=np.float32)
            self.v = xp.zeros(self.shard.size, dtype=np.float32)
        lo, hi = self.update_range
        local = slice(lo - self.shard.start, hi - self.shard.start)
        if hi > lo:
            self.backend.adamw_update(self.flat_params[lo:hi], self.flat_grads[lo:hi], self.m[local], self.v[local],
                                      None if self.master is None else self.master[local], hp=hp, step=step,
                                      grad_scale=grad_scale, seed=seed, decayed=self.decayed,
                                      norm_squared=None if clip_to is None else self.norm_squared,
                                      max_norm=clip_to or 1.0)
        if self.sharded:
            self.group.all_gather(self.flat_params)

    def _decayed_spans(self) -> tuple[tuple[int, int], ...]:
        """The weight-decayed tensors' [start, stop) within the update range, adjacent ones merged."""
        base, spans = self.update_range[0], []
        for _, name, lo, hi in self.pieces:
            if name not in DECAYED_PARAMS:
                continue
            if spans and spans[-1][1] == lo - base:
                spans[-1] = (spans[-1][0], hi - base)
            else:
                spans.append((lo - base, hi - base))
        return tuple(spans)

    def optimizer_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(m, v, master) of this rank's shard on the host in fp32 (zeros before the first update;
        master None when the parameters are their own fp32 master copy or -w 0 keeps none)."""
        n, host = self.shard.size, self.backend.to_host
        m, v = (np.zeros(n, np.float32) if a is None else host(a) for a in (self.m, self.v))
        return m, v, None if self.master is None else host(self.master)

    def load_optimizer_state(self, m: np.ndarray, v: np.ndarray, master: np.ndarray | None) -> str | None:
        """Take a checkpoint's optimizer state for this rank's shard; a note for the user when its
        master weights go unused (-w 0 resuming a -w 1 run)."""
        to_device = self.backend.to_device
        self.m, self.v = to_device(m, np.float32), to_device(v, np.float32)
        if self.master is not None:
            if master is None:
                raise LlmcError("the checkpoint has no master weights; resume with -w 0")
            self.master[...] = to_device(master, np.float32)
        elif master is not None:
            if self.backend.act_dtype != np.float32:
                return "Warning: the checkpoint has master weights, but -w 0 runs without them"
            self.params[...] = to_device(master, np.float32)  # fp32 parameters: the master copy is the exact one
        return None

    # ------------------------------------------------------------------ host views
    @property
    def losses(self):
        """(B, T) fp32 per-position losses of the last forward with targets."""
        return self.acts["losses"]

    def set_batch(self, inputs: np.ndarray, targets: np.ndarray | None = None) -> None:
        """Copy a (B, T) batch into the static input buffers (what a captured graph reads)."""
        self.inputs[...] = self.backend.to_device(np.asarray(inputs, dtype=np.int32))
        if targets is not None:
            self.targets[...] = self.backend.to_device(np.asarray(targets, dtype=np.int32))

    def mean_loss(self) -> float:
        return float(self.backend.to_host(self.acts["losses"]).mean())

    def params_host(self) -> np.ndarray:
        """fp32 parameters on the host (the master copy when it holds them all)."""
        full = self.master is not None and not self.sharded
        return self.backend.to_host(self.master if full else self.params)


# ----------------------------------------------------------------------------- inference

def _layernorm(xp, x, weight, bias):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + LN_EPS)
    return xc * rstd * weight + bias


def _gelu(xp, x):
    return 0.5 * x * (1.0 + xp.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


class KVCacheModel:
    """GPT-2 inference over positions 0..length-1, caching each layer's keys and values."""

    def __init__(self, cfg: GPTConfig, params, xp: ModuleType, length: int):
        if not 0 < length <= cfg.max_seq_len:
            raise LlmcError(f"generation needs {length} positions; the model has max_seq_len {cfg.max_seq_len}")
        self.cfg, self.xp, self.length = cfg, xp, length
        self.p = views(params, param_shapes(cfg))  # fp32, llm.c order
        L, NH, C = cfg.num_layers, cfg.num_heads, cfg.channels
        self.k = xp.zeros((L, NH, length, C // NH), dtype=np.float32)  # (L, NH, length, HS)
        self.v = xp.zeros((L, NH, length, C // NH), dtype=np.float32)
        self.pos = 0  # positions cached so far

    def reset(self) -> None:
        self.pos = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Append len(tokens) positions; the host fp32 logits (V,) of the last one."""
        xp, p, cfg = self.xp, self.p, self.cfg
        L, NH, C = cfg.num_layers, cfg.num_heads, cfg.channels
        n, start = len(tokens), self.pos
        end = start + n
        if end > self.length:
            raise LlmcError(f"position {end - 1} is past the KV cache's {self.length} positions")
        idx = xp.asarray(np.asarray(tokens, dtype=np.int64))
        x = p["wte"][idx] + p["wpe"][start:end]  # (n, C)
        # query i (position start+i) may not see keys after it; nothing to mask for one new token
        future = xp.asarray(np.arange(end)[None, :] > start + np.arange(n)[:, None]) if n > 1 else None
        for l in range(L):
            qkv = _layernorm(xp, x, p["ln1w"][l], p["ln1b"][l]) @ p["qkvw"][l].T + p["qkvb"][l]  # (n, 3C)
            q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(n, NH, -1).transpose(1, 0, 2) for i in range(3))
            self.k[l, :, start:end] = k  # (NH, n, HS)
            self.v[l, :, start:end] = v
            att = q @ self.k[l, :, :end].transpose(0, 2, 1) * (1.0 / math.sqrt(C // NH))  # (NH, n, end)
            if future is not None:
                att[:, future] = -np.inf
            att = xp.exp(att - att.max(axis=-1, keepdims=True))
            att /= att.sum(axis=-1, keepdims=True)
            y = (att @ self.v[l, :, :end]).transpose(1, 0, 2).reshape(n, C)
            x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
            h = _gelu(xp, _layernorm(xp, x, p["ln2w"][l], p["ln2b"][l]) @ p["fcw"][l].T + p["fcb"][l])  # (n, 4C)
            x = x + h @ p["fcprojw"][l].T + p["fcprojb"][l]
        last = _layernorm(xp, x[-1], p["lnfw"], p["lnfb"])  # only the last position's logits are needed
        logits = p["wte"][: cfg.vocab_size] @ last  # (V,), tied weights
        self.pos = end
        return np.asarray(xp.asnumpy(logits) if hasattr(xp, "asnumpy") else logits, dtype=np.float32)

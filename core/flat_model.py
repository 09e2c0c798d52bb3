"""What every model family's training and KV-cache models share, whatever their layers: parameters,
gradients and optimizer state each in one flat buffer with named views into it (llm.c's layout), so the
optimizer, clipping, the gradient reduction over processes and checkpointing are single passes; and the
bookkeeping of a KV cache that generation appends positions to. GPT-2 (core/model.py) and Llama 3
(core/llama.py) subclass these with their forward and backward.
"""

import functools
import math
from types import ModuleType
from typing import Any

import numpy as np

from llmc.core.distributed import Group, SingleProcess, llm_c_shard_pieces, shard_pieces, whole, zero_shard
from llmc.core.errors import LlmcError
from llmc.core.linears import make_linears
from llmc.core.primitives import AdamW


def views(flat, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Named views into one flat buffer, in llm.c's order."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[offset: offset + n].reshape(shape)
        offset += n
    return out


class FlatModel:
    """A training model's flat parameters, gradients and AdamW state on a backend, sharded over the
    processes with ZeRO-1, and the blocks' linear layers (core/linears.py); a subclass allocates its
    activations (`acts`, with "losses" (B, T) fp32 and "logits") and writes forward and backward against the
    primitive set. With inference, params is a training model's flat parameters on the backend, shared rather
    than copied, and the model keeps no gradients: a forward-only model (llm.c's sampler runs one)."""

    def __init__(self, cfg: Any, backend: ModuleType, params: np.ndarray, shapes: dict[str, tuple[int, ...]],
                 decayed_params: tuple[str, ...], B: int, T: int, *, recompute: int, gelu_fusion: int,
                 master_weights: bool, group: Group | None, zero_stage: int, fp8: bool = False,
                 inference: bool = False):
        if T > cfg.max_seq_len:
            raise LlmcError(f"-t {T} is larger than the model's max_seq_len {cfg.max_seq_len}")
        if recompute not in (0, 1, 2) or gelu_fusion not in (0, 1, 2):
            raise LlmcError("recompute (-r) and gelu fusion (-ge) take 0, 1 or 2")
        self.cfg, self.backend, self.B, self.T = cfg, backend, B, T
        self.recompute, self.gelu_fusion = recompute, gelu_fusion
        self.linears = make_linears(backend, fp8, shapes, B * T, recompute)  # the blocks' four, bf16 or FP8
        xp, dt = backend.xp, backend.act_dtype
        n = params.size
        # the optimizer state covers this rank's shard: all n with one process or -z 0 (gradients all-reduced),
        # 1/N with -z 1 (gradients reduce-scattered, parameters all-gathered through the padded flat buffers)
        self.group = group or SingleProcess()
        self.sharded = zero_stage == 1 and self.group.world > 1
        self.shard = zero_shard(n, self.group.world, self.group.rank) if self.sharded else whole(n)
        self.pieces = shard_pieces(shapes, self.shard)
        # every rank's share of the optimizer state as the -z 1 state files hold it: llm.c's, where it applies
        world = self.group.world
        by_rank = [llm_c_shard_pieces(shapes, world, r) for r in range(world)] if self.sharded else [None]
        self.file_pieces = by_rank if by_rank[0] is not None else None
        self.flat_params = params if inference else backend.to_device(np.pad(params, (0, self.shard.padded - n)), dt)
        self.params = self.flat_params[:n]  # flat, llm.c order
        self.p = views(self.params, shapes)
        if inference:
            self.flat_grads = self.grads = self.g = self.shard_grads = None
        else:
            self.flat_grads = xp.zeros_like(self.flat_params)
            self.grads = self.flat_grads[:n]
            self.g = views(self.grads, shapes)
            self.shard_grads = self.flat_grads[self.shard.start: self.shard.stop]
        # fp32 optimizer state, allocated at the first update; master weights only when params are not fp32
        self.m = self.v = None
        self.master = backend.to_device(np.pad(params, (0, self.shard.padded - n))[self.shard.start: self.shard.stop],
                                        np.float32) if master_weights and dt != np.float32 and not inference else None
        self.norm_squared = xp.zeros(1, dtype=np.float32)
        # AdamW's flat range: the tensors' part of the shard (not the padding past the last tensor)
        self.update_range = (self.pieces[0][2], self.pieces[-1][3]) if self.pieces else (self.shard.start,) * 2
        self.decayed = self._decayed_spans(decayed_params)
        self.inputs = xp.zeros((B, T), dtype=np.int32)
        self.targets = xp.zeros((B, T), dtype=np.int32)

    # ------------------------------------------------------------------ buffers
    def _zeros(self, shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict:
        """Zeroed backend arrays for {name: (shape, dtype)}."""
        return {name: self.backend.xp.zeros(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}

    def _kept(self, name: str, l: int):
        """Layer l's slice of activation `name`, or the one buffer every layer shares where recompute keeps
        a single layer's (the backward recomputes it)."""
        buf = self.acts[name]
        return buf[l if buf.shape[0] > 1 else 0]

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
        """AdamW over this rank's shard in one call; weight decay only on the family's decayed tensors
        (the 2-D weights, as train_gpt2.cu). With clip_to, the gradients are clipped to that global norm
        on the device, from the norm compute_grad_norm queued (skipped where it is not finite). Sharded,
        the updated shards are then all-gathered into every rank's parameters."""
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

    def _decayed_spans(self, decayed_params: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
        """The weight-decayed tensors' [start, stop) within the update range, adjacent ones merged."""
        base, spans = self.update_range[0], []
        for _, name, lo, hi in self.pieces:
            if name not in decayed_params:
                continue
            if spans and spans[-1][1] == lo - base:
                spans[-1] = (spans[-1][0], hi - base)
            else:
                spans.append((lo - base, hi - base))
        return tuple(spans)

    @property
    def state_size(self) -> int:
        """Elements of each of m, v and master in this rank's state file."""
        if self.file_pieces is None:
            return self.shard.size
        return sum(hi - lo for lo, hi in self.file_pieces[self.group.rank])

    def optimizer_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(m, v, master) of this rank on the host in fp32, as its state file holds them: its shard, in
        llm.c's per-tensor layout where the model has one (a collective: every rank calls it). Zeros
        before the first update; master None when the parameters are their own fp32 master copy or -w 0
        keeps none."""
        xp = self.backend.xp
        m, v = (xp.zeros(self.shard.size, np.float32) if a is None else a for a in (self.m, self.v))
        to_file = self.backend.to_host if self.file_pieces is None else self._to_file_layout
        return to_file(m), to_file(v), None if self.master is None else to_file(self.master)

    def _to_file_layout(self, shard):
        """llm.c's share of a sharded fp32 vector for this rank: the shards gathered, then its pieces."""
        xp = self.backend.xp
        full = xp.zeros(self.shard.padded, np.float32)
        full[self.shard.start: self.shard.stop] = shard
        self.group.all_gather(full)
        return self.backend.to_host(xp.concatenate([full[lo:hi] for lo, hi in self.file_pieces[self.group.rank]]))

    def _from_file_layout(self, share: np.ndarray):
        """This rank's shard of a vector whose llm.c shares the ranks hold: the shares side by side are the
        vector in llm.c's order; each rank's pieces go back to their flat places where they meet the shard."""
        xp, world, rank, k = self.backend.xp, self.group.world, self.group.rank, share.size
        shares = xp.zeros(world * k, np.float32)
        shares[rank * k: (rank + 1) * k] = self.backend.to_device(share, np.float32)
        self.group.all_gather(shares)
        start, stop = self.shard.start, self.shard.stop
        shard = xp.zeros(self.shard.size, np.float32)
        for r, pieces in enumerate(self.file_pieces):
            at = r * k
            for lo, hi in pieces:
                a, b = max(lo, start), min(hi, stop)
                if a < b:
                    shard[a - start: b - start] = shares[at + a - lo: at + b - lo]
                at += hi - lo
        return shard

    def load_optimizer_state(self, m: np.ndarray, v: np.ndarray, master: np.ndarray | None,
                             llm_c_layout: bool = True) -> str | None:
        """Take a checkpoint's optimizer state for this rank, as its state file holds it (llm_c_layout
        False: an earlier llmc's contiguous -z 1 shards); a note for the user when its master weights go
        unused (-w 0 resuming a -w 1 run). A collective under -z 1, as optimizer_state."""
        if self.file_pieces is not None and llm_c_layout:
            to_device = self._from_file_layout
        else:
            to_device = functools.partial(self.backend.to_device, dtype=np.float32)
        self.m, self.v = to_device(m), to_device(v)
        if self.master is not None:
            if master is None:
                raise LlmcError("the checkpoint has no master weights; resume with -w 0")
            self.master[...] = to_device(master)
        elif master is not None:
            if self.backend.act_dtype != np.float32:
                return "Warning: the checkpoint has master weights, but -w 0 runs without them"
            # fp32 parameters: the master copy is the exact one
            self.flat_params[self.shard.start: self.shard.stop] = to_device(master)
            if self.sharded:
                self.group.all_gather(self.flat_params)
        return None

    # ------------------------------------------------------------------ host views
    @property
    def losses(self):
        """(B, T) fp32 per-position losses of the last forward with targets."""
        return self.acts["losses"]

    @property
    def logits(self):
        """(B, T, V or Vp) logits of the last forward without dloss (with it, they became dlogits)."""
        return self.acts["logits"]

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


class KVCache:
    """Inference over positions 0..length-1 in fp32 (NumPy or CuPy arrays through xp), caching each
    layer's keys and values: each forward appends positions. A subclass computes the logits of new
    positions in _logits, calling _attend for each layer's attention. The parameters may be narrower
    than fp32 (the GPU trainer's bf16 ones, for its mid-run samples): w() widens one tensor or layer at a
    time, so no fp32 copy of the whole model is ever made (1.5B parameters: 6 GB)."""

    def __init__(self, cfg: Any, params, shapes: dict[str, tuple[int, ...]], xp: ModuleType, length: int,
                 num_kv_heads: int, head_size: int):
        if not 0 < length <= cfg.max_seq_len:
            raise LlmcError(f"generation needs {length} positions; the model has max_seq_len {cfg.max_seq_len}")
        self.cfg, self.xp, self.length = cfg, xp, length
        self.p = views(params, shapes)  # fp32, llm.c order
        L = cfg.num_layers
        self.k = xp.zeros((L, num_kv_heads, length, head_size), dtype=np.float32)  # (L, NKV, length, HS)
        self.v = xp.zeros((L, num_kv_heads, length, head_size), dtype=np.float32)
        self.pos = 0  # positions cached so far

    def reset(self) -> None:
        self.pos = 0

    def w(self, name: str, l: int | None = None):
        """Parameter `name` (layer l's slice when given) in fp32; fp32 parameters are not copied."""
        t = self.p[name] if l is None else self.p[name][l]
        return t.astype(np.float32, copy=False)

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Append len(tokens) positions; the host fp32 logits (V,) of the last one."""
        xp, start = self.xp, self.pos
        end = start + len(tokens)
        if end > self.length:
            raise LlmcError(f"position {end - 1} is past the KV cache's {self.length} positions")
        logits = self._logits(xp.asarray(np.asarray(tokens, dtype=np.int64)), start)
        self.pos = end
        return np.asarray(xp.asnumpy(logits) if hasattr(xp, "asnumpy") else logits, dtype=np.float32)

    def _logits(self, idx, start: int):
        """The logits (V,) of the last of the positions start.. of the tokens idx (n,)."""
        raise NotImplementedError

    def _attend(self, l: int, q, k, v, start: int):
        """Layer l's causal attention of the new positions start..start+n-1: k, v (NKV, n, HS) join the
        cache, q (NH, n, HS) attends to every cached position up to its own; (n, NH*HS). Query head h
        uses key/value head h // (NH/NKV)."""
        xp = self.xp
        NH, n, HS = q.shape
        NKV = k.shape[0]
        end = start + n
        self.k[l, :, start:end] = k
        self.v[l, :, start:end] = v
        # the query heads of one key/value head side by side: (NKV, NH/NKV * n, HS), GPT-2's (NH, n, HS)
        att = q.reshape(NKV, -1, HS) @ self.k[l, :, :end].transpose(0, 2, 1) * (1.0 / math.sqrt(HS))
        if n > 1:  # query i (position start+i) may not see keys after it; nothing to mask for one new token
            future = np.arange(end)[None, :] > start + np.arange(n)[:, None]  # (n, end)
            att[:, xp.asarray(np.tile(future, (NH // NKV, 1)))] = -np.inf
        att = xp.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        return (att @ self.v[l, :, :end]).reshape(NH, n, HS).transpose(1, 0, 2).reshape(n, NH * HS)

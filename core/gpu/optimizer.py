"""AdamW and the squared global gradient norm (kernels/adamw.cu, kernels/global_norm.cu), over the flat
parameter and gradient buffers, which start 16-byte aligned (ZeRO shards too: core/distributed.ALIGN),
so these kernels keep to 8-wide packs."""

import functools

import numpy as np

from llmc.core.gpu.runtime import (BF16, after_side_work, cdiv, check, check_arrays, current, launch, launch_named,
                                   ptr, scratch, to_device)
from llmc.core.primitives import AdamW

@after_side_work
def global_norm_squared(out, grads) -> None:
    """out (1,) fp32 = sum of grads**2 (grads flat)."""
    check_arrays("global_norm_squared", BF16, grads, align=16)
    check_arrays("global_norm_squared", np.float32, out)
    check(out.size >= 1, "global_norm_squared: out needs one element")
    blocks = 4 * current().sms
    partial = scratch("norm_partial", blocks * 4)
    launch("global_norm", "norm_squared_partial", blocks, 512, (partial, grads, np.int64(grads.size)))
    launch("global_norm", "norm_squared_finish", 1, 1024, (out, partial, np.int32(blocks)))


@functools.cache
def _spans(decayed: tuple[tuple[int, int], ...]):
    """The decayed spans as a device array, uploaded once per distinct tuple (the model's is fixed)."""
    return to_device(np.array(decayed, dtype=np.int64).reshape(-1))


@after_side_work
def adamw_update(param, grad, m, v, master, *, hp: AdamW, step: int, grad_scale: float = 1.0, seed: int = 0,
                 decayed: tuple[tuple[int, int], ...] | None = None, norm_squared=None, max_norm: float = 1.0) -> None:
    """One AdamW step (step from 1) with grad * grad_scale over flat arrays, in one launch; weight decay
    on the [start, stop) spans in decayed (all elements when None). bf16 param, fp32 m, v and master.
    With master, param = bf16(master) rounded to nearest; without, stochastically rounded with random
    bits hashed from (element index, seed). With norm_squared (1,) fp32, clipped to max_norm on the
    device, nothing changed where that norm is not finite."""
    op = "adamw_update"
    check_arrays(op, BF16, param, grad, align=16)
    check_arrays(op, np.float32, m, v, master, align=16)
    check_arrays(op, np.float32, norm_squared)
    check(all(a.size == param.size for a in (grad, m, v, master) if a is not None), f"{op}: sizes differ")
    check(step >= 1, f"{op}: step counts from 1")
    n = param.size
    spans = None if decayed is None or not decayed else _spans(tuple(decayed))
    f32 = np.float32
    launch_named("adamw", "adamw_update", max(1, cdiv(cdiv(n, 8), 256)), 256,
                 param=param, master=ptr(master), grad=grad, m=m, v=v, n=np.int64(n), lr=f32(hp.lr),
                 beta1=f32(hp.beta1), beta2=f32(hp.beta2), bc1=f32(1.0 - hp.beta1 ** step),
                 bc2=f32(1.0 - hp.beta2 ** step), eps=f32(hp.eps), wd=f32(hp.weight_decay),
                 grad_scale=f32(grad_scale), seed=np.uint32(seed & 0xFFFFFFFF), spans=ptr(spans),
                 nspans=np.int32(-1 if decayed is None else len(decayed)), norm_squared=ptr(norm_squared),
                 max_norm=f32(max_norm))

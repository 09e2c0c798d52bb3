"""AdamW and the gradient norm in fp32 NumPy.

AdamW runs over cache-sized chunks so its dozen element-wise passes stay in L2 instead of
streaming the whole model through memory a dozen times; two threads share the chunks (NumPy
releases the GIL inside ufuncs)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 1 << 15  # elements per chunk: 128 KiB of fp32
_pool = ThreadPoolExecutor(max_workers=2)


def global_norm_squared(out, grads):
    g = grads.reshape(-1)
    out[0] = np.dot(g, g)


def _adamw_chunks(start, stop, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale):
    g = np.empty(CHUNK, dtype=np.float32)
    t = np.empty(CHUNK, dtype=np.float32)
    for lo in range(start, stop, CHUNK):
        hi = min(lo + CHUNK, stop)
        n = hi - lo
        gs, ts = g[:n], t[:n]
        p, mm, vv = param[lo:hi], m[lo:hi], v[lo:hi]
        np.multiply(grad[lo:hi], grad_scale, out=gs)
        mm *= beta1  # m = beta1 m + (1 - beta1) g
        np.multiply(gs, 1.0 - beta1, out=ts)
        mm += ts
        vv *= beta2  # v = beta2 v + (1 - beta2) g^2
        gs *= gs
        gs *= 1.0 - beta2
        vv += gs
        np.multiply(vv, 1.0 / bc2, out=ts)  # update = m_hat / (sqrt(v_hat) + eps) + wd * p
        np.sqrt(ts, out=ts)
        ts += eps
        np.multiply(mm, 1.0 / bc1, out=gs)
        gs /= ts
        if weight_decay:
            np.multiply(p, weight_decay, out=ts)
            gs += ts
        gs *= lr
        p -= gs


def adamw_update(param, grad, m, v, master, lr, beta1, beta2, eps, weight_decay, step, grad_scale, seed):
    # fp32 parameters are their own master weights; seed (stochastic rounding) has no use in fp32
    target = param if master is None else master
    flat = [a.reshape(-1) for a in (target, grad, m, v)]
    n = flat[0].size
    args = (lr, beta1, beta2, eps, weight_decay, 1.0 - beta1 ** step, 1.0 - beta2 ** step, grad_scale)
    if n < 4 * CHUNK:
        _adamw_chunks(0, n, *flat, *args)
    else:
        half = (n // 2 + CHUNK - 1) // CHUNK * CHUNK
        jobs = [_pool.submit(_adamw_chunks, lo, hi, *flat, *args) for lo, hi in ((0, half), (half, n))]
        for j in jobs:
            j.result()
    if master is not None:
        param[...] = master

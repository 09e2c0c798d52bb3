"""GELU (tanh approximation) as a standalone kernel pair, for runs without the matmul fusion (-ge)."""

import numpy as np

from llmc.core.gpu.runtime import BF16, after_side_work, cdiv, check, check_arrays, launch


def _n8(op: str, a, b) -> np.int64:
    check_arrays(op, BF16, a, b)
    check(a.shape == b.shape, f"{op}: shapes differ")
    check(a.size % 8 == 0, f"{op}: size must be a multiple of 8")
    return np.int64(a.size // 8)


@after_side_work
def gelu_forward(out, inp) -> None:
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    n8 = _n8("gelu_forward", out, inp)
    launch("gelu", "gelu_forward", cdiv(int(n8), 256), 256, (out, inp, n8))


@after_side_work
def gelu_backward(dinp, inp, dout) -> None:
    """dinp = gelu'(inp) * dout (dinp may be dout itself)."""
    n8 = _n8("gelu_backward", dinp, inp)
    check_arrays("gelu_backward", BF16, dout)
    check(dout.shape == inp.shape, "gelu_backward: shapes differ")
    launch("gelu", "gelu_backward", cdiv(int(n8), 256), 256, (dinp, inp, dout, n8))

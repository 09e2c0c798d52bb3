"""GELU (tanh approximation) as a standalone kernel pair, for runs without the matmul fusion (-ge) and
for GEMMs whose GELU operand cuBLASLt's epilogues cannot take (matmul.py)."""

import numpy as np

from llmc.core.gpu.runtime import BF16, after_side_work, cdiv, check, check_arrays, launch, pack_width


def _packs(op: str, a, b, *others) -> tuple[np.int64, int]:
    """(number of packs, pack width) for elementwise work over a, b and others, all of one shape."""
    check_arrays(op, BF16, a, b, *others)
    check(all(x.shape == a.shape for x in (b, *others)), f"{op}: shapes differ")
    pack = pack_width(a.size, a, b, *others)
    return np.int64(a.size // pack), pack


@after_side_work
def gelu_forward(out, inp) -> None:
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    packs, pack = _packs("gelu_forward", out, inp)
    launch("gelu", "gelu_forward", cdiv(int(packs), 256), 256, (out, inp, packs), pack=pack)


@after_side_work
def gelu_backward(dinp, inp, dout) -> None:
    """dinp = gelu'(inp) * dout (dinp may be dout itself)."""
    packs, pack = _packs("gelu_backward", dinp, inp, dout)
    launch("gelu", "gelu_backward", cdiv(int(packs), 256), 256, (dinp, inp, dout, packs), pack=pack)

"""SwiGLU (Llama's MLP; kernels/swiglu.cu) on llm.c's fused layout: c_fc's and c_fc2's outputs side by
side in one (B, T, 2H) tensor, out (B, T, H) = x1 * silu(x2)."""

import numpy as np

from llmc.core.gpu.runtime import BF16, after_side_work, cdiv, check, check_arrays, launch, pack_width, rows


def _check(op: str, inp, half, dinp=None) -> tuple[int, int, int]:
    """(N, H, pack) for inp (..., 2H), half (..., H) and dinp shaped as inp."""
    check_arrays(op, BF16, inp, half, dinp)
    N, H2 = rows(inp)
    check(H2 % 2 == 0 and inp.shape[:-1] + (H2 // 2,) == half.shape, f"{op}: input {tuple(inp.shape)} must be "
          f"the output {tuple(half.shape)} with twice its channels")
    check(dinp is None or dinp.shape == inp.shape, f"{op}: dinp differs from inp {tuple(inp.shape)}")
    H = H2 // 2
    return N, H, pack_width(H, inp, half, dinp)  # H % pack == 0: x2 = x1 + H keeps the alignment


@after_side_work
def swiglu_forward(out, inp) -> None:
    """out (B,T,H) = inp[..., :H] * silu(inp[..., H:]) for inp (B,T,2H)."""
    N, H, pack = _check("swiglu_forward", inp, out)
    launch("swiglu", "swiglu_forward", cdiv(N * H // pack, 256), 256, (out, inp, np.int64(N), np.int32(H)), pack=pack)


@after_side_work
def swiglu_backward(dinp, inp, dout) -> None:
    """dinp (B,T,2H) = gradient of swiglu_forward given dout (B,T,H)."""
    N, H, pack = _check("swiglu_backward", inp, dout, dinp)
    launch("swiglu", "swiglu_backward", cdiv(N * H // pack, 256), 256,
           (dinp, inp, dout, np.int64(N), np.int32(H)), pack=pack)

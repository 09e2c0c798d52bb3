"""Rotary position embedding (Llama; kernels/rope.cu) of the query and key heads of a qkv tensor laid out
as attention's, (B, T, (NH + 2 NKV) * HS); the value heads are copied, so out is the tensor attention
reads. freqs_cis (maxT, HS/2, 2) fp32 holds each position's and pair's (cos, sin)."""

import numpy as np

from llmc.core.gpu.runtime import BF16, after_side_work, cdiv, check, check_arrays, launch, pack_width


def _check(op: str, out, inp, freqs_cis, num_heads: int, num_kv_heads: int) -> tuple[tuple, int]:
    """(kernel arguments after the pointers, pack width)."""
    check_arrays(op, BF16, out, inp)
    check_arrays(op, np.float32, freqs_cis, align=8)  # (cos, sin) read as one float2
    check(inp.ndim == 3 and out.shape == inp.shape, f"{op}: qkv must be (B, T, (NH+2*NKV)*HS), both alike")
    check(num_heads > 0 and num_kv_heads > 0 and num_heads % num_kv_heads == 0,
          f"{op}: {num_heads} query heads not a multiple of {num_kv_heads} key/value heads")
    B, T, row = inp.shape
    heads = num_heads + 2 * num_kv_heads
    check(row % heads == 0 and row // heads % 2 == 0, f"{op}: {row} channels are not {heads} heads of an even size")
    HS = row // heads
    check(freqs_cis.ndim == 3 and freqs_cis.shape[0] >= T and freqs_cis.shape[1:] == (HS // 2, 2),
          f"{op}: freqs_cis {tuple(freqs_cis.shape)} must be (>= {T}, {HS // 2}, 2)")
    args = (np.int64(B * T), np.int32(T), np.int32(row), np.int32((num_heads + num_kv_heads) * HS), np.int32(HS))
    return args, pack_width(HS, out, inp)  # a pack within one head


@after_side_work
def rope_forward(out, inp, freqs_cis, num_heads: int, num_kv_heads: int) -> None:
    """Each query/key head's channel pair (2i, 2i+1) at position t turned by freqs_cis[t, i]; values copied."""
    args, pack = _check("rope_forward", out, inp, freqs_cis, num_heads, num_kv_heads)
    launch("rope", "rope_forward", cdiv(inp.size // pack, 256), 256, (out, inp, freqs_cis) + args, pack=pack)


@after_side_work
def rope_backward(dinp, dout, freqs_cis, num_heads: int, num_kv_heads: int) -> None:
    """dinp = gradient of rope_forward given dout: each pair turned back (dinp may be dout itself)."""
    args, pack = _check("rope_backward", dinp, dout, freqs_cis, num_heads, num_kv_heads)
    launch("rope", "rope_backward", cdiv(dout.size // pack, 256), 256, (dinp, dout, freqs_cis) + args, pack=pack)

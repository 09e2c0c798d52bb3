"""Token + position embedding (kernels/encoder.cu), or the token embedding alone without wpe (Llama).
The backward is deterministic: positions are sorted by token on the GPU (a counting sort, stable) and each
token's gradient rows are summed in position order."""

import numpy as np

from llmc.core.gpu.runtime import (BF16, after_side_work, cdiv, check, check_arrays, cp, current, launch, pack_width,
                                   ptr, scratch)

WTE_THREADS = 1024  # at most, per block of the wte gradient: one per pack of channels, looping past that


def _check(op: str, out, inp, wte, wpe) -> tuple[int, int, int, int, int]:
    check_arrays(op, BF16, out, wte, wpe)
    check_arrays(op, np.int32, inp)
    check(inp.ndim == 2, f"{op}: tokens must be (B, T)")
    (B, T), (Vp, C) = inp.shape, wte.shape
    check(out.shape == (B, T, C), f"{op}: activations must be ({B}, {T}, {C}), got {tuple(out.shape)}")
    check(wpe is None or (wpe.ndim == 2 and wpe.shape[1] == C and wpe.shape[0] >= T),
          f"{op}: wpe {None if wpe is None else tuple(wpe.shape)} too small for T={T}")
    return B, T, C, Vp, pack_width(C, out, wte, wpe)


@after_side_work
def encoder_forward(out, inp, wte, wpe) -> None:
    """out (B,T,C) = wte[inp] + wpe[:T]; without wpe (None), wte[inp]."""
    B, T, C, Vp, pack = _check("encoder_forward", out, inp, wte, wpe)
    threads = B * T * C // pack
    launch("encoder", "encoder_forward", cdiv(threads, 256), 256,
           (out, inp, wte, ptr(wpe), np.int32(B * T), np.int32(T), np.int32(C), np.int32(Vp)), pack=pack)


@after_side_work
def encoder_backward(dwte, dwpe, dout, inp) -> None:
    """dwte[inp] += dout; dwpe[:T] += dout summed over B (when given)."""
    B, T, C, Vp, pack = _check("encoder_backward", dout, inp, dwte, dwpe)
    N = B * T
    if dwpe is not None:
        launch("encoder", "encoder_backward_wpe", cdiv(T * C // pack, 256), 256,
               (dwpe, dout, np.int32(B), np.int32(T), np.int32(C)), pack=pack)
    buckets = Vp + 1  # the last one takes out-of-range ids
    count, offset, cursor = (scratch(f"encoder_{tag}", buckets * 4) for tag in ("count", "offset", "cursor"))
    bucket, sorted_positions = scratch("encoder_bucket", N * 4), scratch("encoder_sorted", N * 4)
    cp.cuda.runtime.memsetAsync(count.data.ptr, 0, buckets * 4, current().stream.ptr)
    grid, n, vp = cdiv(N, 256), np.int32(N), np.int32(Vp)
    launch("encoder", "encoder_count", grid, 256, (count, inp, n, vp), pack=pack)
    launch("encoder", "encoder_offsets", 1, 1024, (offset, cursor, count, np.int32(buckets)), pack=pack)
    launch("encoder", "encoder_scatter", grid, 256, (bucket, cursor, inp, n, vp), pack=pack)
    launch("encoder", "encoder_sort_buckets", grid, 256, (sorted_positions, bucket, offset, count, inp, n, vp),
           pack=pack)
    launch("encoder", "encoder_backward_wte", N, min(C // pack, WTE_THREADS),
           (dwte, sorted_positions, inp, dout, np.int32(N), np.int32(C), np.int32(Vp)), pack=pack)

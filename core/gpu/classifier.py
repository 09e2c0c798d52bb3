"""The fused classifier (kernels/classifier.cu): cross-entropy losses and, in the same pass over
the logits, dlogits written in place. Target ids outside [0, V) give NaN losses (checked on the
host by the loop) rather than a device-to-host read here, which a CUDA graph cannot hold."""

import numpy as np

from llmc.core.gpu.runtime import BF16, after_side_work, check, check_arrays, current, launch, pack_width, rows

THREADS = 1024
STATIC_SHARED_MEM = 1024  # room for the kernel's static arrays beside the rows


@after_side_work
def softmax_crossentropy(losses, logits, targets, vocab_size: int, dloss: float | None = None) -> None:
    """losses (B,T) fp32 = -log softmax(logits[..., :V])[target]; with dloss, logits (B,T,Vp) become
    (softmax - onehot) * dloss, padded columns zero."""
    op = "softmax_crossentropy"
    check_arrays(op, BF16, logits)
    check_arrays(op, np.float32, losses)
    check_arrays(op, np.int32, targets)
    N, Vp = rows(logits)
    check(losses.size == N and targets.size == N, f"{op}: losses and targets need {N} entries")
    check(0 < vocab_size <= Vp, f"{op}: vocab size {vocab_size} outside (0, {Vp}]")
    pack = pack_width(Vp, logits)  # 8 unless Vp (a multiple of 128 in llm.c's files) is not a multiple of 8
    gpu = current()
    two_rows = 2 * 2 * Vp <= gpu.max_shared_memory - STATIC_SHARED_MEM  # in shared memory: the persistent kernel
    if dloss is not None and pack == 8 and two_rows:
        launch("classifier", "softmax_crossentropy_train", min(N, gpu.sms), THREADS,
               (losses, logits, targets, np.int32(N), np.int32(vocab_size), np.int32(Vp), np.float32(dloss)),
               shared_mem=2 * 2 * Vp)
        return
    launch("classifier", "softmax_crossentropy", N, THREADS,
           (losses, logits, targets, np.int32(vocab_size), np.int32(Vp),
            np.float32(0.0 if dloss is None else dloss), np.int32(dloss is not None)), pack=pack)

"""llm.c's learning-rate schedules (llmc/schedulers.h).

1) warmup: lr * (step + 1) / warmup for step < warmup;
2) then decay over the remaining steps to min_lr = lr * final_frac, by shape:
   cosine: min + (1 + cos(pi r)) / 2 * (lr - min); linear: lr - r (lr - min);
   constant: lr; wsd: flat until 80% of training, then min + (1 - sqrt(r')) (lr - min).
"""

import math

from llmc.core.errors import LlmcError

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def learning_rate(kind: str, step: int, lr: float, warmup: int, total: int, final_frac: float) -> float:
    if kind not in SCHEDULES:
        raise LlmcError(f"unknown learning rate schedule {kind!r}: use {', '.join(SCHEDULES)}")
    if kind == "constant":
        return lr
    min_lr = lr * final_frac
    if kind == "wsd":
        decay_point = int(0.8 * total)
        if step < warmup:
            return lr * (step + 1) / warmup
        if step < decay_point:
            return lr
        r = (step - decay_point) / max(total - decay_point, 1)
        return min_lr + (1.0 - math.sqrt(r)) * (lr - min_lr)
    if step < warmup:
        return lr * (step + 1) / warmup
    r = (step - warmup) / max(total - warmup, 1)
    if kind == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (lr - min_lr)
    return lr - r * (lr - min_lr)

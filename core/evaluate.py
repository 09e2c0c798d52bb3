"""llm.c's multiple-choice evaluation (HellaSwag; llmc/dataloader.h's EvalLoader).

Each example is a context and 4 completions. B // 4 examples are packed into a (B, T) batch, one
row per completion: the row holds context + completion, and the targets at the positions that
predict the completion's tokens are its tokens (the mask). One forward with targets gives per-token
losses; a completion's score is its mean loss over the mask, and the lowest score is the model's
answer (the first one on ties).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from llmc.core.errors import LlmcError
from llmc.core.formats import EvalExample, read_eval_shard

COMPLETIONS = 4  # llm.c's ASSUMED_NUM_COMPLETIONS
DEFAULT_HELLASWAG = "data/hellaswag/hellaswag_val.bin"  # where `llmc prepro hellaswag` writes it


@dataclass
class EvalBatch:
    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    mask: np.ndarray  # (B, T) bool: positions whose loss scores a completion
    labels: list[int]  # correct completion of each packed example


def check_examples(examples: list[EvalExample], B: int, T: int, vocab_size: int, path: str) -> None:
    """llm.c's EvalLoader asserts, as one clear error before training starts."""
    if B < COMPLETIONS:
        raise LlmcError(f"HellaSwag needs batch size -b >= {COMPLETIONS} (one row per completion), not {B}; "
                        f"disable it with -h 0 or raise -b")
    if not examples:
        raise LlmcError(f"{path}: no examples")
    for ex in examples:
        where = f"{path}: example {ex.index}"
        if len(ex.completions) != COMPLETIONS or not 0 <= ex.label < COMPLETIONS:
            raise LlmcError(f"{where} has {len(ex.completions)} completions and label {ex.label}; "
                            f"llm.c's evaluation takes {COMPLETIONS}")
        longest = max(len(c) for c in ex.completions)
        if not ex.context or min(len(c) for c in ex.completions) == 0:
            raise LlmcError(f"{where} has an empty context or completion")
        if len(ex.context) + longest >= T:
            raise LlmcError(f"{where} needs {len(ex.context) + longest + 1} positions, more than -t {T}; "
                            f"raise -t or disable HellaSwag with -h 0")
        top = max(max(ex.context), *(max(c) for c in ex.completions))
        if top >= vocab_size:
            raise LlmcError(f"{where} has token id {top}, outside the model's vocab of {vocab_size}")


def eval_batches(examples: list[EvalExample], B: int, T: int) -> Iterator[EvalBatch]:
    per_batch = B // COMPLETIONS
    for first in range(0, len(examples), per_batch):
        batch = EvalBatch(np.zeros((B, T), np.int32), np.zeros((B, T), np.int32), np.zeros((B, T), bool), [])
        for i, ex in enumerate(examples[first: first + per_batch]):
            n = len(ex.context)
            for c, completion in enumerate(ex.completions):
                row, k = i * COMPLETIONS + c, len(completion)
                batch.inputs[row, :n] = ex.context
                batch.inputs[row, n: n + k] = completion
                batch.targets[row, n - 1: n - 1 + k] = completion  # position t predicts token t+1
                batch.mask[row, n - 1: n - 1 + k] = True
            batch.labels.append(ex.label)
        yield batch


def count_correct(losses: np.ndarray, batch: EvalBatch) -> int:
    """llm.c's evalloader_stat_losses: fp32 running sums of each row's masked losses."""
    sums = np.cumsum(np.where(batch.mask, losses, 0), axis=1, dtype=np.float32)[:, -1]  # adding 0 is exact
    means = sums / np.maximum(batch.mask.sum(axis=1), 1).astype(np.float32)
    scores = means[: len(batch.labels) * COMPLETIONS].reshape(-1, COMPLETIONS)
    return int((np.argmin(scores, axis=1) == np.asarray(batch.labels)).sum())


def load_hellaswag(path: str, B: int, T: int, vocab_size: int, out: Callable[[str], None]) -> list[EvalExample] | None:
    """-h 1's examples, checked to fit (B, T) and the vocab; None, with llm.c's note, where the file is missing."""
    if not Path(path).is_file():
        out(f"HellaSwag eval not found at {path}, skipping its evaluation")
        out("You can run `llmc prepro hellaswag` to export and use it with `-h 1`.")
        return None
    examples = read_eval_shard(path)
    check_examples(examples, B, T, vocab_size, path)
    return examples


def evaluate(model: Any, examples: list[EvalExample]) -> float:
    """Accuracy of a family's training model on the examples (checked with check_examples)."""
    correct = 0
    batches = eval_batches(examples, model.B, model.T)
    total = -(-len(examples) // (model.B // COMPLETIONS))
    for batch in tqdm(batches, total=total, desc="HellaSwag", unit="batch", leave=False, disable=None):
        model.set_batch(batch.inputs, batch.targets)
        model.forward()
        correct += count_correct(model.backend.to_host(model.losses), batch)
    return correct / len(examples)

"""MMLU (rendered as llm.c dev/data/mmlu.py does): the 14,042 test questions as llm.c's eval file.

Context "Question: {question}\\n\\nAnswer:", completions " " + each of the 4 choices, label the index
of the answer: mmlu_test.bin. llm.c's mmlu.py evaluates in PyTorch and writes no file; this keeps its
rendering in hellaswag's eval layout, which llm.c's eval loader reads.
Sources: the hub's cais/mmlu (all/test parquet: question, choices, answer), or --input with such a
parquet/JSON/JSONL, the original data.tar, or its *_test.csv files (question, A, B, C, D, answer
letter), taken in sorted order.
"""

import csv
import io
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator


from llmc.core.errors import LlmcError
from llmc.core.formats import EvalExample
from llmc.data import PreproConfig, Written
from llmc.data.shards import write_examples
from llmc.data.sources import SUFFIXES, hub_file, local_files, read_rows
from llmc.data.tokenizer import encode

REPO, FILE = "cais/mmlu", "all/test-00000-of-00001.parquet"
LETTERS = "ABCD"


def csv_rows(lines: Iterable[str], where: str) -> Iterator[dict[str, Any]]:
    for i, rec in enumerate(csv.reader(lines)):
        if len(rec) != 6:
            raise LlmcError(f"{where}: row {i} has {len(rec)} fields, expected question, 4 choices, answer")
        yield {"question": rec[0], "choices": rec[1:5], "answer": rec[5]}


def tar_rows(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """The *_test.csv members of the original data.tar, in name order."""
    try:
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith("_test.csv")),
                             key=lambda m: m.name)
            if not members:
                raise LlmcError(f"{path}: no *_test.csv files in this archive")
            for m in members:
                where = f"{path}:{m.name}"
                with io.TextIOWrapper(tar.extractfile(m), encoding="utf-8", newline="") as f:
                    yield from ((row, where) for row in csv_rows(f, where))
    except tarfile.TarError as e:
        raise LlmcError(f"{path}: not a readable tar archive ({e})") from None


def rows(src: Path) -> Iterator[tuple[dict[str, Any], str]]:
    if src.is_file() and src.name.endswith(".tar"):
        yield from tar_rows(src)
        return
    for path in local_files(src, SUFFIXES + ("_test.csv",)):
        if path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                yield from ((row, str(path)) for row in csv_rows(f, str(path)))
        else:
            yield from ((row, str(path)) for row in read_rows(path, ("question", "choices", "answer")))


def example(index: int, row: dict[str, Any], where: str) -> EvalExample:
    try:
        question, choices, answer = row["question"], row["choices"], row["answer"]
    except KeyError as e:
        raise LlmcError(f"{where}: example {index} has no {e.args[0]!r}") from None
    label = LETTERS.index(answer) if isinstance(answer, str) and answer in LETTERS else answer
    if not isinstance(choices, list) or len(choices) != 4 or label not in range(4):
        raise LlmcError(f"{where}: example {index} needs 4 choices and an answer A-D or 0-3, got {answer!r}")
    context = encode(f"Question: {question}\n\nAnswer:").tolist()
    return EvalExample(index, label, context, [encode(" " + str(c)).tolist() for c in choices])


def prepare(cfg: PreproConfig) -> list[Written]:
    src = cfg.input or hub_file(REPO, FILE)
    return [write_examples(cfg.out_dir / "mmlu_test.bin", rows(src), example, src, cfg.name, cfg.progress)]

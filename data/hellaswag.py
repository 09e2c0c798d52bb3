"""HellaSwag (llm.c dev/data/hellaswag.py): the 10,042 validation examples as llm.c's eval file.

Example i of hellaswag_val.jsonl becomes index i, its label, the tokens of "ctx" as context and the
tokens of " " + ending for each of its 4 endings: hellaswag_val.bin, what llm.c's `-h 1` reads.
"""

from typing import Any


from llmc.core.errors import LlmcError
from llmc.core.formats import EvalExample
from llmc.data import PreproConfig, Written
from llmc.data.shards import write_examples
from llmc.data.sources import local_files, read_rows, url_file
from llmc.data.tokenizer import encode

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
COMPLETIONS = 4  # llm.c's eval loader assumes 4 candidates per example


def example(index: int, row: dict[str, Any], where: str) -> EvalExample:
    try:
        ctx, endings, label = row["ctx"], row["endings"], int(row["label"])  # the hub's copy has label "3"
    except (KeyError, TypeError, ValueError) as e:
        raise LlmcError(f"{where}: example {index} lacks a ctx, endings or integer label ({e!r})") from None
    if not isinstance(endings, list) or len(endings) != COMPLETIONS or not 0 <= label < COMPLETIONS:
        raise LlmcError(f"{where}: example {index} needs {COMPLETIONS} endings and a label in 0..{COMPLETIONS - 1}")
    return EvalExample(index, label, encode(str(ctx)).tolist(), [encode(" " + str(e)).tolist() for e in endings])


def prepare(cfg: PreproConfig) -> list[Written]:
    files = local_files(cfg.input) if cfg.input else [url_file(URL, cfg.out_dir / "hellaswag_val.jsonl", cfg.progress)]
    rows = ((row, str(path)) for path in files for row in read_rows(path, ("ctx", "endings", "label")))
    return [write_examples(cfg.out_dir / "hellaswag_val.bin", rows, example, cfg.input or files[0], cfg.name,
                           cfg.progress)]

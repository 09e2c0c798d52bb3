"""Dataset preparation: llm.c's dev/data scripts, each a module with `prepare(cfg) -> list[Written]`.

Token-shard datasets (tinyshakespeare, tinystories, fineweb, edu_fineweb) write llm.c's token shards:
GPT-2's tokens in uint16, or with model_desc "llama-3" a given Llama 3 tokenizer's in uint32; eval sets
(hellaswag, mmlu) write llm.c's eval files, GPT-2's only. This module stays light (no numpy, no
tiktoken) so the CLI can list datasets without loading them.
"""

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from llmc.core.errors import LlmcError

# dataset name -> module in llmc.data
DATASETS = {
    "tinyshakespeare": "tinyshakespeare",
    "tinystories": "tinystories",
    "fineweb": "fineweb",
    "edu_fineweb": "fineweb",
    "hellaswag": "hellaswag",
    "mmlu": "mmlu",
}
EVAL_SETS = ("hellaswag", "mmlu")
FINEWEB_VERSIONS = ("10B", "100B")
MODEL_DESCS = ("gpt-2", "llama-3")  # llm.c's dev/data -m/--model_desc


@dataclass
class PreproConfig:
    name: str  # a key of DATASETS
    out_dir: Path  # where the .bin files (and downloads that are not on the hub) go
    input: Path | None = None  # local source (file or folder); None = download
    builtin: bool = False  # tinyshakespeare: the Shakespeare text shipped in data/assets
    version: str = "10B"  # fineweb/edu_fineweb sample: 10B or 100B tokens
    shard_size: int = 10**8  # tokens per shard (fineweb/edu_fineweb), as llm.c
    workers: int = 1  # tokenizer processes; 1 tokenizes in this process
    progress: bool = True  # tqdm bars on stderr
    model_desc: str = "gpt-2"  # a key of MODEL_DESCS: whose tokenizer and shard format
    tokenizer: Path | None = None  # llama-3: a Hugging Face tokenizer folder or Meta's tokenizer.model


@dataclass
class Written:
    path: Path
    count: int  # tokens in a token shard, examples in an eval file
    unit: str  # "tokens" or "examples"


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(cfg: PreproConfig) -> list[Written]:
    """Download (or read cfg.input), tokenize and write cfg.name's files into cfg.out_dir."""
    if cfg.model_desc == "llama-3":
        if cfg.name in EVAL_SETS:  # its hellaswag.py writes GPT-2 tokens only, its mmlu.py no file at all
            raise LlmcError(f"{cfg.name}: llm.c defines no llama-3 eval file (its eval files hold GPT-2 tokens); "
                            f"drop -m llama-3")
        if cfg.tokenizer is None:
            raise LlmcError("-m llama-3 needs --tokenizer PATH: a Hugging Face tokenizer folder or Meta's "
                            "tokenizer.model (llmc downloads no tokenizer)")
        from llmc.data.llama3_tokenizer import load
        load(cfg.tokenizer)  # a bad tokenizer stops here, before any download
    module = importlib.import_module(f"llmc.data.{DATASETS[cfg.name]}")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    return module.prepare(cfg)

"""`llmc prepro`: a dataset -> llm.c's token shards or eval file (llm.c's dev/data/*.py)."""

import time
from pathlib import Path

import click

from llmc.core.errors import LlmcError
from llmc.data import DATASETS, FINEWEB_VERSIONS, MODEL_DESCS, PreproConfig, default_workers, prepare

SHARDED = ("fineweb", "edu_fineweb")


class TokenCount(click.ParamType):
    """A positive integer, also written as 1e8 or 100_000_000."""
    name = "N"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            n = float(value)  # accepts 1e8 and 100_000_000
        except ValueError:
            n = 0.0
        if not (1 <= n < 2**53 and n.is_integer()):
            self.fail(f"{value!r} is not a positive whole number of tokens", param, ctx)
        return int(n)


def default_dir(name: str, version: str) -> str:
    """llm.c's folder names: fineweb10B, edu_fineweb100B, ...; the dataset's name otherwise."""
    return f"{name}{version}" if name in SHARDED else name


@click.command("prepro")
@click.argument("name", type=click.Choice(list(DATASETS)), metavar="NAME")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.  [default: ./data/NAME, ./data/fineweb10B for fineweb -v 10B, as llm.c]")
@click.option("-i", "--input", "input_", type=click.Path(path_type=Path),
              help="Local source instead of a download: a file, or a folder of .parquet/.jsonl/.json files "
                   "(tinyshakespeare: a text file; tinystories: also the .tar.gz; mmlu: also data.tar or *_test.csv).")
@click.option("--builtin", is_flag=True,
              help="tinyshakespeare only: tokenize the Shakespeare text shipped with llmc (seven Gutenberg plays, "
                   "not char-rnn's input.txt, so the shards differ from llm.c's); needs no network.")
@click.option("-v", "--version", type=click.Choice(FINEWEB_VERSIONS),
              help="fineweb/edu_fineweb: the sample-10BT or sample-100BT subset.  [default: 10B]")
@click.option("-s", "--shard-size", type=TokenCount(),
              help="fineweb/edu_fineweb: tokens per shard (e.g. 1e8).  [default: 1e8]")
@click.option("-m", "--model-desc", type=click.Choice(MODEL_DESCS), default="gpt-2", show_default=True,
              help="Whose tokens and shard format: gpt-2 (uint16, shipped tokenizer) or llama-3 (uint32, "
                   "needs --tokenizer); as llm.c's -m/--model_desc.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="-m llama-3: a local Hugging Face tokenizer folder (tokenizer.json) or Meta's tokenizer.model; "
                   "never downloaded.")
@click.option("-p", "--workers", type=click.IntRange(min=1), default=default_workers, show_default="all cores",
              help="Tokenizer processes for token shards; 1 tokenizes in the main process.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def command(name: str, out_dir: Path | None, input_: Path | None, builtin: bool, version: str | None,
            shard_size: int | None, model_desc: str, tokenizer: Path | None, workers: int, quiet: bool) -> None:
    """Tokenize dataset NAME with GPT-2's tokenizer (or Llama 3's: -m llama-3 --tokenizer PATH) into
    llm.c's files.

    \b
    tinyshakespeare  tiny_shakespeare_{val,train}.bin (val = first 32,768 tokens)
    tinystories      TinyStories_{val,train}.bin (val = the first JSON file)
    fineweb          fineweb_val_000000.bin, fineweb_train_000001.bin, ... (-v 10B|100B)
    edu_fineweb      edu_fineweb_val_000000.bin, ... (FineWeb-Edu sample-10BT|100BT)
    hellaswag        hellaswag_val.bin (eval file, what llm.c's -h 1 reads; gpt-2 only)
    mmlu             mmlu_test.bin (eval file; gpt-2 only)

    Downloads come from the Hugging Face hub (cached; HF_HUB_OFFLINE honored), or from GitHub for
    tinyshakespeare and hellaswag, as llm.c does; --input uses local files instead.

    Example: llmc prepro tinyshakespeare --builtin -o data/tinyshakespeare

    Llama 3 (llm.c's llama3 branch: BOS before every document, uint32 tokens):
    llmc prepro fineweb -m llama-3 --tokenizer ~/Meta-Llama-3.1-8B
    """
    if name not in SHARDED and (version or shard_size):
        raise LlmcError("--version and --shard-size apply only to fineweb and edu_fineweb")
    if builtin and name != "tinyshakespeare":
        raise LlmcError("--builtin applies only to tinyshakespeare")
    if builtin and input_ is not None:
        raise LlmcError("give --builtin or --input, not both")
    if tokenizer is not None and model_desc != "llama-3":
        raise LlmcError("--tokenizer applies only to -m llama-3 (gpt-2 uses the tokenizer shipped with llmc)")
    cfg = PreproConfig(name=name, out_dir=out_dir or Path("data") / default_dir(name, version or "10B"), input=input_,
                       builtin=builtin, version=version or "10B", shard_size=shard_size or 10**8, workers=workers,
                       progress=not quiet, model_desc=model_desc, tokenizer=tokenizer)
    start = time.perf_counter()
    written = prepare(cfg)
    for w in written:
        click.echo(f"{w.path}: {w.count:,} {w.unit}")
    unit = written[0].unit
    total = sum(w.count for w in written)
    click.echo(f"{name}: {len(written)} file{'s' * (len(written) > 1)}, {total:,} {unit} in {cfg.out_dir} "
               f"({time.perf_counter() - start:.1f} s)")

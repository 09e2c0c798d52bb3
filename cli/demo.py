"""`make demo`: the whole pipeline offline on the shipped Shakespeare text, in a couple of minutes on a
laptop CPU: tokenize it, train a small GPT-2 from scratch for a few hundred steps (llm.c's step lines
and val loss), then sample from the trained checkpoint. Everything goes under ./out/demo."""

import shutil
import sys
from pathlib import Path

import click

from llmc.cli.main import main as llmc
from llmc.core.config import GPT2_VOCAB, GPTConfig, pad_vocab
from llmc.core.formats import write_model
from llmc.core.init import random_init

OUT = Path("out/demo")
# a 4-layer, 128-channel GPT-2 (7.3M parameters, most of them the tied token embedding)
DEMO_MODEL = GPTConfig(max_seq_len=128, vocab_size=GPT2_VOCAB, padded_vocab_size=pad_vocab(GPT2_VOCAB),
                       num_layers=4, num_heads=4, channels=128)
STEPS = 300


def run(*args: str) -> None:
    click.secho(f"\n$ llmc {' '.join(args)}", bold=True)
    try:
        llmc.main(list(args), prog_name="llmc", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


def demo() -> None:
    data, log = OUT / "data", OUT / "log"
    run("prepro", "tinyshakespeare", "--builtin", "-o", str(data), "-q")
    OUT.mkdir(parents=True, exist_ok=True)
    init = OUT / "init.bin"
    write_model(init, DEMO_MODEL, random_init(DEMO_MODEL))
    click.echo(f"wrote {init}: {DEMO_MODEL}")
    if log.exists():  # the demo's own output: a rerun trains afresh instead of refusing the old checkpoints
        shutil.rmtree(log)
        click.echo(f"removed {log} of the previous demo run")
    run("train-cpu", "-e", str(init), "-i", str(data / "tiny_shakespeare_train.bin"),
        "-j", str(data / "tiny_shakespeare_val.bin"), "-o", str(log), "-b", "8", "-t", "64",
        "-x", str(STEPS), "-l", "1e-3", "-u", "20", "-q", "0.1", "-v", "50", "-m", "10", "-s", "0",
        "-n", str(STEPS))
    run("sample", "-e", str(log / f"model_{STEPS:08d}.bin"), "--prompt", "ROMEO:", "-g", "80", "--seed", "1337")


if __name__ == "__main__":
    demo()

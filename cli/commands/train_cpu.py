"""`llmc train-cpu`: llm.c's train_gpt2.c, fp32 on NumPy."""

import click

from llmc.cli.flags import run_training, train_config, train_options


@click.command("train-cpu")
@train_options({"B": 4, "T": 64, "model": "gpt2_124M.bin"}, allow_gpu_only=False)
def command(**options) -> None:
    """Train GPT-2 on the CPU in fp32 (llm.c's train_gpt2.c), with llm.c's flags.

    Example: llmc train-cpu -e d6 -i 'data/tinyshakespeare/*train.bin' -j 'data/tinyshakespeare/*val.bin' -x 20 -o out
    """
    run_training(train_config(options), "cpu")

"""`llmc train-cpu`: llm.c's train_gpt2.c, fp32 on NumPy."""

import click

from llmc.cli.flags import run_training, train_config, train_options


@click.command("train-cpu")
@train_options({"B": 4, "T": 64, "model": "gpt2_124M.bin"}, allow_gpu_only=False)
def command(**options) -> None:
    """Train GPT-2 on the CPU in fp32, with llm.c's flags.

    The model, data order and loop are llm.c's train_gpt2.c; the optimizer and its defaults are
    train_gpt2.cu's, as on the GPU: AdamW with betas 0.9/0.95, eps 1e-8, weight decay -c on the 2-D
    weights only, gradients clipped to global norm 1.0 (train_gpt2.c uses betas 0.9/0.999 and no
    clipping). -o DIR gets main.log (llm.c's), metrics.csv, config.json and checkpoints.

    Example: llmc train-cpu -e d6 -i 'data/tinyshakespeare/*train.bin' -j 'data/tinyshakespeare/*val.bin' -x 20 -o out
    """
    run_training(train_config(options), "cpu", options)

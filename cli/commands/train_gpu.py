"""`llmc train-gpu`."""

import click


@click.command("train-gpu", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Train GPT-2 on an NVIDIA GPU in bf16 (llm.c's train_gpt2.cu).

    Example: llmc train-gpu -e d12 -i 'data/fineweb10B/*train*.bin'"""
    raise click.ClickException("llmc train-gpu is not implemented yet")

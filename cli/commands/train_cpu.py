"""`llmc train-cpu`."""

import click


@click.command("train-cpu", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Train GPT-2 on the CPU in fp32 (llm.c's train_gpt2.c)."""
    raise click.ClickException("llmc train-cpu is not implemented yet")

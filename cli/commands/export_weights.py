"""`llmc export-weights`."""

import click


@click.command("export-weights", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Convert GPT-2 weights between Hugging Face and llm.c .bin files.

    Example: llmc export-weights gpt2 -o ."""
    raise click.ClickException("llmc export-weights is not implemented yet")

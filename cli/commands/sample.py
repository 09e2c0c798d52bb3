"""`llmc sample`."""

import click


@click.command("sample", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Generate text from a checkpoint.

    Example: llmc sample -e gpt2_124M.bin --prompt 'Hello'"""
    raise click.ClickException("llmc sample is not implemented yet")

"""`llmc plot`."""

import click


@click.command("plot", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Plot train/val loss and HellaSwag curves from main.log files.

    Example: llmc plot out/"""
    raise click.ClickException("llmc plot is not implemented yet")

"""`llmc prepro`."""

import click


@click.command("prepro", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Tokenize a dataset into llm.c token shards.

    Example: llmc prepro tinyshakespeare"""
    raise click.ClickException("llmc prepro is not implemented yet")

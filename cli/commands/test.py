"""`llmc test`."""

import click


@click.command("test", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Check a backend against a reference debug state (llm.c's test_gpt2.c)."""
    raise click.ClickException("llmc test is not implemented yet")

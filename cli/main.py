"""The `llmc` command group. Subcommands load lazily, so `llmc --help` never imports CuPy or torch."""

import importlib

import click

from llmc.core.errors import LlmcError

# command name -> module in llmc.cli.commands; each module exports `command`
COMMANDS = {
    "prepro": "prepro",
    "export-weights": "export_weights",
    "train-cpu": "train_cpu",
    "train-gpu": "train_gpu",
    "test": "test",
    "sample": "sample",
    "plot": "plot",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"llmc.cli.commands.{COMMANDS[name]}")
        return module.command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlmcError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # missing files, unwritable dirs, full disks: one line, no traceback
            raise click.ClickException(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["--help"]})
@click.version_option(package_name="llmc")
def main() -> None:
    """llm.c's GPT-2/GPT-3 training as a Python command-line suite."""

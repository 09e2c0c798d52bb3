"""`llmc test`: llm.c's test_gpt2.c / test_gpt2.cu / test_llama3.cu for any GPT-2 or Llama 3 shape."""

import click


@click.command("test")
@click.option("-m", "-e", "--model", "model_path", default="gpt2_124M.bin", show_default=True,
              type=click.Path(dir_okay=False),
              help="model checkpoint (.bin, fp32 or bf16; GPT-2 or Llama 3, told apart by its magic)")
@click.option("-s", "--state", "state_path", default="gpt2_124M_debug_state.bin", show_default=True,
              type=click.Path(dir_okay=False), help="reference debug state (train_gpt2.py's or train_llama3.py's)")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="AdamW steps whose losses (and Llama 3's grad norms) are checked")
@click.option("-f8", "--fp8", type=click.IntRange(0, 1), default=0, show_default=True,
              help="the blocks' linear layers in FP8, as train -f8 1, against tolerances derived from E4M3's and "
                   "E5M2's rounding (core/check.py)")
def command(model_path: str, state_path: str, device: str, steps: int, fp8: int) -> None:
    """Check a backend against a reference debug state: logits, loss, every gradient, step losses.

    Example: llmc test -m gpt2_124M.bin -s gpt2_124M_debug_state.bin
    """
    from llmc.core.backends import get_backend
    from llmc.core.check import check

    if not check(model_path, state_path, get_backend(device), steps, out=click.echo, fp8=bool(fp8)):
        raise SystemExit(1)

"""`llmc export-weights`."""

import click


@click.command("export-weights")
@click.argument("source")
@click.argument("outdir", required=False)
@click.option("-o", "--out-dir", default=None, help="Output folder (default: the working directory).")
@click.option("--to-hf", is_flag=True, help="Convert an llm.c MODEL.bin (fp32 or bf16) to a Hugging Face folder.")
@click.option("--debug-state", is_flag=True,
              help="Also write gpt2_SIZE_debug_state.bin for `llmc test` (needs PyTorch; skipped without it).")
@click.option("--input", "batch_input", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Debug batch source: a token shard, or text tokenized as llm.c's tinyshakespeare "
                   "[default: data/tinyshakespeare/tiny_shakespeare_val.bin].")
@click.option("-b", "--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Debug batch B.")
@click.option("-t", "--seq-len", default=64, show_default=True, type=click.IntRange(min=1), help="Debug batch T.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=0),
              help="AdamW steps whose losses the debug state carries (test_gpt2.c's settings).")
def command(source: str, outdir: str | None, out_dir: str | None, to_hf: bool, debug_state: bool,
            batch_input: str | None, batch_size: int, seq_len: int, steps: int) -> None:
    """Convert GPT-2 and Llama 3 weights between Hugging Face and llm.c .bin files.

    \b
    SOURCE is gpt2, gpt2-medium, gpt2-large, gpt2-xl, a hub repo id (owner/name) or a local folder
    with config.json and model.safetensors. Hub checkpoints are read from the local Hugging Face
    cache, else downloaded; offline (HF_HUB_OFFLINE=1 or no connection) pass a local folder.
    Writes, as llm.c's train_gpt2.py: gpt2_SIZE.bin (fp32, version 3), gpt2_SIZE_bf16.bin (bf16,
    version 5, round-to-nearest-even), gpt2_tokenizer.bin; SIZE is 124M, 355M, 774M or 1558M
    (other shapes: dN or LxHyCz). wte is padded with zero rows to a multiple of 128.

    \b
    A folder whose config.json has model_type "llama" (laid out as meta-llama/Llama-3.2-1B, safetensors
    sharded or not) gives, as llm.c's train_llama3.py: llamaVERSION_SIZE.bin (fp32, version 3) and
    llamaVERSION_SIZE_bf16.bin (bf16, version 5), e.g. llama3.2_1B.bin (other shapes: LxHyKVkCz).

    \b
    With --to-hf, SOURCE is an llm.c MODEL.bin and OUTDIR (or -o) gets config.json and
    model.safetensors, loadable by transformers.GPT2LMHeadModel.from_pretrained, plus GPT-2's
    tokenizer (vocab.json, merges.txt, tokenizer_config.json) when the vocab is GPT-2's 50257. A Llama
    3 file (magic 20240803) gives a LlamaForCausalLM folder (no tokenizer; its bias slots must be zero).

    \b
    Examples:
      llmc export-weights gpt2 -o . --debug-state
      llmc export-weights --to-hf gpt2_124M.bin hf_gpt2
      llmc export-weights ./Llama-3.2-1B -o .
      llmc export-weights --to-hf llama3.2_1B.bin hf_llama"""
    from llmc.core.errors import LlmcError
    from llmc.core.export import export_to_hf, export_to_llmc

    if outdir and out_dir and outdir != out_dir:
        raise LlmcError(f"two output folders given: {outdir} and -o {out_dir}")
    target = outdir or out_dir
    if to_hf:
        if target is None:
            raise LlmcError("--to-hf needs an output folder: llmc export-weights --to-hf MODEL.bin OUTDIR")
        if debug_state or batch_input:
            raise LlmcError("--debug-state and --input apply to HF -> llm.c exports, not --to-hf")
        export_to_hf(source, target, click.echo)
    else:
        if batch_input and not debug_state:
            raise LlmcError("--input is the debug batch: it needs --debug-state")
        export_to_llmc(source, target or ".", click.echo, debug_state=debug_state, batch_input=batch_input,
                       B=batch_size, T=seq_len, steps=steps)

"""`llmc sample`: stream text from a model with a KV cache."""

import math
import time

import click


@click.command("sample")
@click.option("-e", "model", default="gpt2_124M.bin", show_default=True,
              help="model: a .bin checkpoint (llm.c format), or d6|d12|... for a random init")
@click.option("--prompt", default="", help="text to continue (in the tokenizer's tokens); generation starts after "
              "<|endoftext|> (a Llama 3 tokenizer's BOS)")
@click.option("-g", "tokens", type=int, default=256, show_default=True, help="tokens to generate at most")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="softmax temperature (0 = greedy)")
@click.option("--top-k", type=int, default=0, show_default=True, help="sample from the k likeliest tokens (0 = all)")
@click.option("--seed", type=int, default=1337, show_default=True, help="xorshift sampler seed (llm.c's is 1337)")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="where to run: the NumPy backend, or CuPy (the same code)")
@click.option("--tokenizer", type=click.Path(), default=None,
              help="llm.c's gpt2_tokenizer.bin, or a Llama 3 tokenizer (a Hugging Face folder or Meta's "
                   "tokenizer.model, as prepro -m llama-3 takes) [default: gpt2_tokenizer.bin if in the cwd, "
                   "else GPT-2's BPE]")
@click.option("--kv-cache/--no-kv-cache", default=True, show_default=True,
              help="--no-kv-cache re-runs the whole prefix for every token (llm.c's way; for comparison)")
@click.option("--stop-at-eot/--no-stop-at-eot", default=True, show_default=True,
              help="stop when the model samples <|endoftext|> (the end of a document); --no-stop-at-eot prints it "
                   "and goes on into a new document, up to -g tokens")
def command(model: str, prompt: str, tokens: int, temperature: float, top_k: int, seed: int, device: str,
            tokenizer: str | None, kv_cache: bool, stop_at_eot: bool) -> None:
    """Generate text from a model, printing tokens as they come; stops at <|endoftext|> (unless
    --no-stop-at-eot), at -g tokens or at the model's max_seq_len.

    Example: llmc sample -e gpt2_124M.bin --prompt 'The meaning of life is' -g 64 --top-k 40
    """
    import numpy as np

    from llmc.core.backends import get_backend
    from llmc.core.errors import LlmcError
    from llmc.core import families
    from llmc.core.rand import XorShift
    from llmc.core.sample import generate, load_decoder, max_new_tokens

    if not math.isfinite(temperature):
        raise LlmcError(f"--temperature must be a finite number >= 0, not {temperature}")
    if tokens < 1 or temperature < 0 or top_k < 0:
        raise LlmcError("-g takes >= 1 tokens, --temperature >= 0 and --top-k >= 0")
    if not 0 < seed < 2**64:
        raise LlmcError(f"--seed must be in 1 .. 2^64-1 (an xorshift state), not {seed}")
    backend = get_backend(device)
    family, cfg, params = families.load(model)
    finite = np.isfinite(params)
    if not finite.all():  # NaN logits would sample garbage (or always the last token), silently
        raise LlmcError(f"{model}: {finite.size - np.count_nonzero(finite)} of its parameters are not finite "
                        f"(NaN or Inf); was it saved from a diverged run?")
    decoder = load_decoder(tokenizer)
    if decoder.eot >= cfg.vocab_size:
        if decoder.path is not None:
            raise LlmcError(f"{decoder.path} does not fit {model}: its end-of-text id {decoder.eot} is outside "
                            f"the model's vocab of {cfg.vocab_size}")
        raise LlmcError(f"{model}: the model's vocab of {cfg.vocab_size} has no <|endoftext|> ({decoder.eot}) "
                        f"to start from")
    context = [decoder.eot, *decoder.encode(prompt)]
    limit = max_new_tokens(cfg, len(context))
    if limit < 1:
        raise LlmcError(f"the prompt is {len(context) - 1} tokens; the model's max_seq_len is {cfg.max_seq_len}")
    n = min(tokens, limit)
    params = backend.to_device(params, np.float32)
    click.echo(prompt, nl=False)
    t0, count, at_eot = time.perf_counter(), 0, False
    for token in generate(family.KVCacheModel, cfg, params, backend.xp, context, n, XorShift(seed), temperature, top_k, kv_cache):
        count += 1
        if token == decoder.eot and stop_at_eot:
            at_eot = True
            break
        click.echo(decoder(token), nl=False)
    click.echo(decoder.flush())
    dt = time.perf_counter() - t0
    if at_eot:
        click.echo(f"stopped at <|endoftext|>, token {count} of at most {n} (--no-stop-at-eot goes on)", err=True)
    elif n < tokens:
        click.echo(f"stopped at the model's max_seq_len of {cfg.max_seq_len} positions", err=True)
    click.echo(f"{count} tokens in {dt:.2f} s: {count / dt:.1f} tok/s "
               f"({'KV cache' if kv_cache else 'no KV cache'}, {device})", err=True)

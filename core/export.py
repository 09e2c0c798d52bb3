"""The core of `llmc export-weights`: HF GPT-2 -> llm.c's gpt2_SIZE.bin files (fp32, bf16, tokenizer and,
with PyTorch, the debug state `llmc test` checks against), as llm.c's train_gpt2.py writes them; HF Llama
-> llama{version}_{SIZE}.bin files as train_llama3.py's; and an llm.c checkpoint -> a Hugging Face folder.
The family comes from config.json's model_type, or from the .bin's magic.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmc.core.config import GPT2_DEPTHS, GPT2_VOCAB, GPTConfig
from llmc.core.errors import LlmcError
from llmc.core.formats import (SHARD_MAGIC, read_magic, read_model, read_shard, write_debug_state, write_model,
                               write_tokenizer)
from llmc.core.hf_weights import load_hf, padded_rows_nonzero, write_hf
from llmc.core.hub import _read_json, resolve_source

# llm.c's train_gpt2.py file names: gpt2_{SIZE}.bin, by (L, NH, C)
GPT2_SIZES = {(12, 12, 768): "124M", (24, 16, 1024): "355M", (36, 20, 1280): "774M", (48, 25, 1600): "1558M"}
DEFAULT_BATCH = Path("data/tinyshakespeare/tiny_shakespeare_val.bin")  # `llmc prepro tinyshakespeare`


def size_name(cfg: GPTConfig) -> str:
    """`124M` for GPT-2 small etc. (train_gpt2.py's names), `dN` for llm.c's other depths, else the shape."""
    shape = (cfg.num_layers, cfg.num_heads, cfg.channels)
    if shape in GPT2_SIZES:
        return GPT2_SIZES[shape]
    if GPT2_DEPTHS.get(cfg.num_layers) == (cfg.channels, cfg.num_heads):
        return f"d{cfg.num_layers}"
    return f"L{cfg.num_layers}H{cfg.num_heads}C{cfg.channels}"


def write_gpt2_tokenizer(path: str | os.PathLike) -> None:
    """llm.c's gpt2_tokenizer.bin, from the GPT-2 ranks the package ships (no download)."""
    from llmc.data.tokenizer import EOT, gpt2_encoding

    enc = gpt2_encoding()
    write_tokenizer(path, [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)], EOT)


def debug_batch(path: str | os.PathLike | None, B: int, T: int) -> np.ndarray:
    """The B*T+1 tokens of llm.c's debug batch: the start of a token shard (llm.c: tinyshakespeare val),
    or of a text file tokenized as llm.c's tinyshakespeare (EOT before every blank-line section)."""
    if path is None and not DEFAULT_BATCH.exists():
        raise LlmcError(f"--debug-state uses llm.c's batch from {DEFAULT_BATCH}: run `llmc prepro tinyshakespeare` "
                        "first, or pass --input FILE (a token shard or a text file)")
    path = Path(path if path is not None else DEFAULT_BATCH)
    if read_magic(path) == SHARD_MAGIC:
        tokens = np.asarray(read_shard(path), dtype=np.int32)
    else:
        from llmc.data.tinyshakespeare import read_text, sections
        from llmc.data.tokenizer import encode_documents

        _, tokens = encode_documents(sections(read_text(path)))
    if len(tokens) < B * T + 1:
        raise LlmcError(f"{path}: {len(tokens)} tokens, the debug batch needs B*T+1 = {B * T + 1}")
    return tokens[: B * T + 1].astype(np.int32)


def export_to_llmc(source: str, out_dir: str | os.PathLike, echo: Callable[[str], None] = print,
                   debug_state: bool = False, batch_input: str | None = None, B: int = 4, T: int = 64,
                   steps: int = 10) -> list[Path]:
    """HF GPT-2 -> gpt2_SIZE.bin (fp32), gpt2_SIZE_bf16.bin, gpt2_tokenizer.bin and, with debug_state
    (and torch), gpt2_SIZE_debug_state.bin, as llm.c's train_gpt2.py writes them."""
    config_path, files = resolve_source(source, echo)
    if _read_json(config_path).get("model_type") == "llama":
        if debug_state or batch_input:
            raise LlmcError("--debug-state and --input are for GPT-2: llm.c's Llama debug state comes from "
                            "train_llama3.py")
        return export_llama_to_llmc(config_path, files, source, out_dir, echo)
    tokens = debug_batch(batch_input, B, T) if debug_state else None  # bad input: fail before writing anything
    cfg, flat = load_hf(source, lambda _: None)  # resolved above: from the local folder or cache, silently
    if tokens is not None:
        if T > cfg.max_seq_len:
            raise LlmcError(f"-t {T} is longer than the model's max_seq_len {cfg.max_seq_len}")
        if tokens.max() >= cfg.vocab_size:
            raise LlmcError(f"the debug batch has token {tokens.max()}, outside the model's vocab ({cfg.vocab_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = size_name(cfg)
    written = [out_dir / f"gpt2_{size}.bin", out_dir / f"gpt2_{size}_bf16.bin", out_dir / "gpt2_tokenizer.bin"]
    write_model(written[0], cfg, flat, "fp32")
    write_model(written[1], cfg, flat, "bf16")
    write_gpt2_tokenizer(written[2])
    for path in written:
        echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if tokens is not None:
        state_path = out_dir / f"gpt2_{size}_debug_state.bin"
        try:
            from llmc.core.torch_gpt2 import make_debug_state
        except ImportError:
            echo(f"skipped {state_path}: the debug state is computed by PyTorch, which is not installed "
                 "(pip install 'llmc[dev]')")
            return written
        echo(f"computing the debug state: B={B} T={T}, {steps} AdamW steps with PyTorch (fp32, CPU)")
        x, y = tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)
        write_debug_state(state_path, make_debug_state(cfg, flat, x, y, steps))
        written.append(state_path)
        echo(f"wrote {state_path} ({state_path.stat().st_size:,} bytes)")
    return written


def export_llama_to_llmc(config_path: Path, files: list[Path], source: str, out_dir: str | os.PathLike,
                         echo: Callable[[str], None] = print) -> list[Path]:
    """HF Llama (core/hub.resolve_source's files) -> llama{version}_{SIZE}.bin (fp32) and _bf16.bin."""
    from llmc.core import hf_llama, llama_formats

    cfg, flat = hf_llama.load_hf(config_path, files, source, echo)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = hf_llama.file_stem(cfg)
    written = [out_dir / f"{stem}.bin", out_dir / f"{stem}_bf16.bin"]
    llama_formats.write_model(written[0], cfg, flat, "fp32")
    llama_formats.write_model(written[1], cfg, flat, "bf16")
    for path in written:
        echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return written


def export_to_hf(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                 echo: Callable[[str], None] = print) -> list[Path]:
    """llm.c checkpoint (fp32 or bf16) -> a folder GPT2LMHeadModel.from_pretrained loads (+ GPT-2's
    tokenizer files when the vocab is GPT-2's), or LlamaForCausalLM for a Llama 3 file."""
    from llmc.core.llama_formats import LLAMA3_MAGIC
    from llmc.data.tokenizer import write_hf_tokenizer

    if Path(model_path).is_file() and read_magic(model_path) == LLAMA3_MAGIC:  # read_model reports the rest
        from llmc.core import hf_llama, llama_formats

        cfg, flat = llama_formats.read_model(model_path)
        try:
            written = hf_llama.write_hf(out_dir, cfg, flat)
        except LlmcError as e:
            raise LlmcError(f"{model_path}: {e}") from None
        for path in written:
            echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return written
    cfg, flat = read_model(model_path)
    if padded_rows_nonzero(cfg, flat):
        echo(f"note: {model_path} has non-zero padded wte rows ({cfg.vocab_size}..{cfg.padded_vocab_size}); "
             "HF has no room for them, they are dropped")
    written = write_hf(out_dir, cfg, flat)
    if cfg.vocab_size == GPT2_VOCAB:
        written += write_hf_tokenizer(out_dir, cfg.max_seq_len)
    else:
        echo(f"vocab {cfg.vocab_size} is not GPT-2's {GPT2_VOCAB}: no tokenizer files written")
    for path in written:
        echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return written

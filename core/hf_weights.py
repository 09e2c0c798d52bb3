"""GPT-2 weights between Hugging Face (config.json + model.safetensors) and llm.c checkpoints.

No PyTorch: tensors are read and written with safetensors' NumPy API. Hub checkpoints come from
huggingface_hub's local cache when there, else are downloaded; offline (HF_HUB_OFFLINE, or the hub
unreachable) that fails at once rather than after huggingface_hub's ~30 s of retries. HF's GPT-2
keeps its four matmul weights in Conv1D layout (in, out); llm.c stores (out, in), so those are
transposed both ways. llm.c pads wte to Vp rows with zeros; HF has exactly V rows and ties lm_head
to wte.
"""

import json
import math
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import numpy as np
from tqdm import tqdm

from llmc.core.config import GPT2_DEPTHS, GPT2_EOT, GPT2_VOCAB, GPTConfig, pad_vocab, param_shapes
from llmc.core.errors import LlmcError
from llmc.core.formats import (SHARD_MAGIC, atomic_write, read_model, read_shard, write_debug_state, write_model,
                               write_tokenizer)

# the OpenAI checkpoints, as `llmc export-weights NAME` knows them
HF_REPOS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
            "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
# llm.c's train_gpt2.py file names: gpt2_{SIZE}.bin, by (L, NH, C)
GPT2_SIZES = {(12, 12, 768): "124M", (24, 16, 1024): "355M", (36, 20, 1280): "774M", (48, 25, 1600): "1558M"}

# llm.c tensor -> (HF tensor, without the "transformer." prefix; whether HF stores it transposed)
HF_NAMES = {
    "wte": ("wte.weight", False),
    "wpe": ("wpe.weight", False),
    "ln1w": ("h.{l}.ln_1.weight", False),
    "ln1b": ("h.{l}.ln_1.bias", False),
    "qkvw": ("h.{l}.attn.c_attn.weight", True),
    "qkvb": ("h.{l}.attn.c_attn.bias", False),
    "attprojw": ("h.{l}.attn.c_proj.weight", True),
    "attprojb": ("h.{l}.attn.c_proj.bias", False),
    "ln2w": ("h.{l}.ln_2.weight", False),
    "ln2b": ("h.{l}.ln_2.bias", False),
    "fcw": ("h.{l}.mlp.c_fc.weight", True),
    "fcb": ("h.{l}.mlp.c_fc.bias", False),
    "fcprojw": ("h.{l}.mlp.c_proj.weight", True),
    "fcprojb": ("h.{l}.mlp.c_proj.bias", False),
    "lnfw": ("ln_f.weight", False),
    "lnfb": ("ln_f.bias", False),
}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints
PREFIX = "transformer."


def size_name(cfg: GPTConfig) -> str:
    """`124M` for GPT-2 small etc. (train_gpt2.py's names), `dN` for llm.c's other depths, else the shape."""
    shape = (cfg.num_layers, cfg.num_heads, cfg.channels)
    if shape in GPT2_SIZES:
        return GPT2_SIZES[shape]
    if GPT2_DEPTHS.get(cfg.num_layers) == (cfg.channels, cfg.num_heads):
        return f"d{cfg.num_layers}"
    return f"L{cfg.num_layers}H{cfg.num_heads}C{cfg.channels}"


# ----------------------------------------------------------------------------- configs

def config_from_hf(hf: dict, where: str = "config.json") -> GPTConfig:
    """llm.c's config for a HF GPT-2 config; refuses what llm.c's architecture cannot express."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise LlmcError(f"{where}: model_type {hf.get('model_type')!r} is not gpt2")
    try:
        V, maxT, L, NH, C = (int(hf[k]) for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"))
    except (KeyError, TypeError, ValueError) as e:
        raise LlmcError(f"{where}: missing or bad GPT-2 size field {e}") from None
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": not math.isclose(hf.get("layer_norm_epsilon", 1e-5), 1e-5),
        "n_inner": hf.get("n_inner") not in (None, 4 * C),
        "scale_attn_weights": not hf.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": bool(hf.get("add_cross_attention", False)),
        "tie_word_embeddings": not hf.get("tie_word_embeddings", True),
    }
    bad = [f"{k}={hf.get(k)!r}" for k, v in unsupported.items() if v]
    if bad:
        raise LlmcError(f"{where}: llm.c's GPT-2 cannot express {', '.join(bad)}")
    return GPTConfig(max_seq_len=maxT, vocab_size=V, padded_vocab_size=pad_vocab(V), num_layers=L,
                     num_heads=NH, channels=C)


def hf_config(cfg: GPTConfig) -> dict:
    """A transformers GPT2Config (as config.json) for llm.c's model: no dropout, as llm.c."""
    eot = GPT2_EOT if cfg.vocab_size > GPT2_EOT else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.channels, "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "use_cache": True,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- tensors

def hf_to_llmc(cfg: GPTConfig, get: Callable[[str], np.ndarray]) -> np.ndarray:
    """Flat fp32 llm.c parameters from HF tensors; get(name) returns the tensor called
    name (without the "transformer." prefix). Works for gradients too."""
    shapes = param_shapes(cfg)
    flat = np.empty(sum(math.prod(s) for s in shapes.values()), dtype=np.float32)
    n_tensors = sum(cfg.num_layers if "{l}" in template else 1 for template, _ in HF_NAMES.values())
    pos = 0
    # reading gpt2-xl's 6 GB takes a while: a bar per tensor (silent when stderr is not a terminal)
    with tqdm(total=n_tensors, desc="reading tensors", unit="tensor", leave=False, disable=None) as bar:
        for name, shape in shapes.items():
            template, transposed = HF_NAMES[name]
            if name == "wte":
                shape = (cfg.vocab_size, cfg.channels)  # HF has V rows; the rest of Vp are zeros here
            tensors = ([(template.format(l=l), shape[1:]) for l in range(cfg.num_layers)] if "{l}" in template
                       else [(template, shape)])
            for hf_name, want in tensors:
                t = np.asarray(get(hf_name))
                hf_shape = want[::-1] if transposed else want
                if t.shape != hf_shape:
                    raise LlmcError(f"tensor {hf_name} has shape {t.shape}, the config needs {hf_shape}")
                flat[pos: pos + t.size] = (t.T if transposed else t).reshape(-1)
                pos += t.size
                bar.update()
            if name == "wte":
                n_pad = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels
                flat[pos: pos + n_pad] = 0.0
                pos += n_pad
    return flat


def llmc_to_hf(cfg: GPTConfig, flat: np.ndarray) -> dict[str, np.ndarray]:
    """HF tensors (names as GPT2LMHeadModel.save_pretrained writes them) from flat llm.c parameters;
    wte loses its padded rows."""
    out, pos = {}, 0
    for name, shape in param_shapes(cfg).items():
        block = flat[pos: pos + math.prod(shape)].reshape(shape)
        pos += block.size
        template, transposed = HF_NAMES[name]
        if name == "wte":
            block = block[: cfg.vocab_size]
        tensors = enumerate(block) if "{l}" in template else [(None, block)]
        for l, t in tensors:
            out[PREFIX + template.format(l=l)] = np.ascontiguousarray(t.T if transposed else t, dtype=np.float32)
    return out


# ----------------------------------------------------------------------------- reading HF checkpoints

def resolve_source(source: str, echo: Callable[[str], None] = print) -> tuple[Path, list[Path]]:
    """(config.json, safetensors files) of a local folder, a GPT-2 name or a hub repo id; a hub
    checkpoint from the local cache if all there, else downloaded if the hub answers."""
    local = Path(source)
    if local.is_dir():
        index = local / "model.safetensors.index.json"
        files = [local / "model.safetensors"] if (local / "model.safetensors").exists() else None
        if files is None and index.exists():
            files = [local / f for f in sorted(set(_read_json(index).get("weight_map", {}).values()))]
        if not files:
            raise LlmcError(f"{local}: no model.safetensors (llmc reads safetensors only, not pytorch_model.bin)")
        if not (local / "config.json").exists():
            raise LlmcError(f"{local}: no config.json")
        return local / "config.json", files
    if local.exists():
        hint = "; to convert an llm.c checkpoint use --to-hf" if local.suffix == ".bin" else ""
        raise LlmcError(f"{source}: expected a folder with config.json and model.safetensors{hint}")
    repo = HF_REPOS.get(source, source)
    if repo.count("/") != 1:
        raise LlmcError(f"{source!r} is not a folder, a hub repo id (owner/name) or one of {', '.join(HF_REPOS)}")
    from huggingface_hub import constants  # here, not at the top: local folders need no huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        files = _hub_checkpoint(repo, local_only=True)
        echo(f"reading {repo} (from the local cache)")
        return files
    except LocalEntryNotFoundError:
        pass
    instead = "pass a local Hugging Face folder with config.json and model.safetensors instead"
    if constants.HF_HUB_OFFLINE:
        raise LlmcError(f"{repo} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {instead}")
    if not _reachable(constants.ENDPOINT):
        raise LlmcError(f"{repo} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached: "
                        f"{instead}")
    echo(f"downloading {repo} from the Hugging Face hub")
    return _hub_checkpoint(repo, local_only=False)


def _hub_checkpoint(repo: str, local_only: bool) -> tuple[Path, list[Path]]:
    """(config.json, safetensors files) of a hub repo; local_only: from the cache alone, else
    LocalEntryNotFoundError."""
    config = _hub_file(repo, "config.json", local_only)
    try:
        return config, [_hub_file(repo, "model.safetensors", local_only)]
    except FileNotFoundError:  # sharded; or, from the cache, not cached and maybe sharded
        index = _hub_file(repo, "model.safetensors.index.json", local_only)
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return config, [_hub_file(repo, f, local_only) for f in shards]


def _hub_file(repo: str, filename: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_only))
    except LocalEntryNotFoundError as e:  # not in the cache, and (downloading) the hub went away
        if local_only:
            raise
        raise LlmcError(f"cannot fetch {filename} of {repo}: {_first_line(e)}") from None
    except EntryNotFoundError:
        if filename == "model.safetensors":
            raise FileNotFoundError(filename) from None  # maybe sharded: the caller reads the index
        if filename == "model.safetensors.index.json":
            raise LlmcError(f"{repo} has no model.safetensors (llmc reads safetensors only, "
                            "not pytorch_model.bin)") from None
        raise LlmcError(f"{repo} has no {filename}") from None
    except Exception as e:  # network, auth, unknown repo: one line
        raise LlmcError(f"cannot fetch {filename} of {repo}: {_first_line(e)}") from None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to url's host (or the proxy for it) opens within timeout, name lookup
    included: huggingface_hub retries an unreachable hub for ~30 s before it gives up."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    opened = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    # a thread, since getaddrinfo ignores the timeout and a dead resolver can take far longer
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return opened.is_set()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LlmcError(f"{path}: not valid JSON ({e})") from None


class SafetensorsReader:
    """Tensors by name across one or more safetensors files, read lazily as fp32 NumPy arrays."""

    def __init__(self, files: list[Path]):
        from safetensors import SafetensorError, safe_open

        self.handles, self.where = [], {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="np")
                keys = list(handle.keys())
            except (SafetensorError, OSError) as e:
                raise LlmcError(f"{path}: not a readable safetensors file ({e})") from None
            self.handles.append(handle)
            for k in keys:
                self.where[k.removeprefix(PREFIX)] = (path, handle, k)

    def names(self) -> set[str]:
        return set(self.where)

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise LlmcError(f"no tensor {name} in {', '.join(sorted({p.name for p, _, _ in self.where.values()}))}")
        path, handle, key = self.where[name]
        try:
            t = handle.get_tensor(key)
        except TypeError:  # bf16 has no NumPy dtype: let torch read it, if present
            t = _read_with_torch(path, key)
        except Exception as e:
            raise LlmcError(f"{path}: cannot read tensor {key} ({e})") from None
        return t.astype(np.float32, copy=False)


def _read_with_torch(path: Path, key: str) -> np.ndarray:
    try:
        from safetensors import safe_open
        import torch  # noqa: F401
    except ImportError:
        raise LlmcError(f"{path}: tensor {key} is bfloat16, which needs torch to read (pip install torch)") from None
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key).float().numpy()


def load_hf(source: str, echo: Callable[[str], None] = print) -> tuple[GPTConfig, np.ndarray]:
    """(config, flat fp32 llm.c parameters) of a HF GPT-2 checkpoint: folder, name or repo id."""
    config_path, files = resolve_source(source, echo)
    cfg = config_from_hf(_read_json(config_path), str(config_path))
    reader = SafetensorsReader(files)
    try:
        flat = hf_to_llmc(cfg, reader)
    except LlmcError as e:
        raise LlmcError(f"{source}: {e}") from None
    expected = {template.format(l=l) for template, _ in HF_NAMES.values() for l in range(cfg.num_layers)}
    extra = {n for n in reader.names() - expected if not n.endswith(IGNORED_SUFFIXES)}
    if "lm_head.weight" in extra:  # tied: must repeat wte
        if not np.array_equal(reader("lm_head.weight"), reader("wte.weight")):
            raise LlmcError(f"{source}: lm_head.weight differs from wte.weight; llm.c ties them")
        extra.discard("lm_head.weight")
    if extra:
        raise LlmcError(f"{source}: unexpected tensors for GPT-2: {', '.join(sorted(extra)[:5])}")
    return cfg, flat


# ----------------------------------------------------------------------------- writing HF checkpoints

def write_hf(out_dir: str | os.PathLike, cfg: GPTConfig, flat: np.ndarray) -> list[Path]:
    """config.json + model.safetensors loadable by transformers.GPT2LMHeadModel.from_pretrained."""
    from safetensors.numpy import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path, model_path = out_dir / "config.json", out_dir / "model.safetensors"
    with atomic_write(model_path) as f:
        f.write(save(llmc_to_hf(cfg, flat), metadata={"format": "pt"}))
    with atomic_write(config_path) as f:
        f.write((json.dumps(hf_config(cfg), indent=2) + "\n").encode())
    return [config_path, model_path]


def padded_rows_nonzero(cfg: GPTConfig, flat: np.ndarray) -> bool:
    """Whether wte's padding rows (V..Vp) hold anything; HF has no room for them."""
    return bool(flat[cfg.vocab_size * cfg.channels: cfg.padded_vocab_size * cfg.channels].any())


def write_hf_tokenizer(out_dir: str | os.PathLike, max_seq_len: int) -> list[Path]:
    """GPT-2's vocab.json + merges.txt + tokenizer_config.json, rebuilt offline from tiktoken's ranks:
    each merge is the last pair BPE joins when encoding that token with lower-ranked merges only."""
    from llmc.data.tokenizer import EOT, gpt2_encoding

    ranks = gpt2_encoding()._mergeable_ranks
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))  # GPT-2's byte-level alphabet: unprintable bytes shift to 256+
    char = {b: chr(b if b in printable else next(others)) for b in range(256)}

    def text(b: bytes) -> str:
        return "".join(char[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([x]) for x in token]
        while len(parts) > 2:
            i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], rank))
            parts[i: i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append(f"{text(parts[0])} {text(parts[1])}")
    vocab = {text(token): rank for token, rank in ranks.items()} | {"<|endoftext|>": EOT}
    special = "<|endoftext|>"
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_seq_len,
                                             "bos_token": special, "eos_token": special, "unk_token": special,
                                             "add_prefix_space": False}, indent=2),
    }
    out = []
    for name, content in files.items():
        with atomic_write(Path(out_dir) / name) as f:
            f.write(content.encode("utf-8"))
        out.append(Path(out_dir) / name)
    return out


# ----------------------------------------------------------------------------- commands

DEFAULT_BATCH = Path("data/tinyshakespeare/tiny_shakespeare_val.bin")  # `llmc prepro tinyshakespeare`


def debug_batch(path: str | os.PathLike | None, B: int, T: int) -> np.ndarray:
    """The B*T+1 tokens of llm.c's debug batch: the start of a token shard (llm.c: tinyshakespeare val),
    or of a text file tokenized as llm.c's tinyshakespeare (EOT before every blank-line section)."""
    if path is None and not DEFAULT_BATCH.exists():
        raise LlmcError(f"--debug-state uses llm.c's batch from {DEFAULT_BATCH}: run `llmc prepro tinyshakespeare` "
                        "first, or pass --input FILE (a token shard or a text file)")
    path = Path(path if path is not None else DEFAULT_BATCH)
    with open(path, "rb") as f:
        is_shard = f.read(4) == np.int32(SHARD_MAGIC).astype("<i4").tobytes()
    if is_shard:
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
    from llmc.data.tokenizer import EOT, gpt2_encoding

    tokens = debug_batch(batch_input, B, T) if debug_state else None  # bad input: fail before writing anything
    cfg, flat = load_hf(source, echo)
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
    enc = gpt2_encoding()
    write_tokenizer(written[2], [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)], EOT)
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


def export_to_hf(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                 echo: Callable[[str], None] = print) -> list[Path]:
    """llm.c checkpoint (fp32 or bf16) -> a folder GPT2LMHeadModel.from_pretrained loads (+ GPT-2's
    tokenizer files when the vocab is GPT-2's)."""
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

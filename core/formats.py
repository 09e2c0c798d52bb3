"""llm.c's binary files: token shards, eval shards, model checkpoints, debug states, tokenizers.

Every file starts with a header of 256 little-endian int32 (magic, version, sizes...); the
payload follows. Readers validate magic, version and length and raise LlmcError with the path.
Writers produce exactly llm.c's bytes and write atomically (temporary name, fsync, rename), so an
interrupted write never leaves a half-written file under the final name.
"""

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from llmc.core.config import GPTConfig, num_parameters
from llmc.core.errors import LlmcError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

SHARD_MAGIC, SHARD_VERSION = 20240520, 1  # gpt-2 token shards: uint16 tokens
LLAMA3_SHARD_MAGIC, LLAMA3_SHARD_VERSION = 20240801, 7  # llama-3 token shards: uint32 tokens
# model descriptor -> (magic, version, token dtype): llm.c's HEADERS_INFO (dev/data/data_common.py)
SHARD_FORMATS = {"gpt-2": (SHARD_MAGIC, SHARD_VERSION, "<u2"),
                 "llama-3": (LLAMA3_SHARD_MAGIC, LLAMA3_SHARD_VERSION, "<u4")}
EVAL_MAGIC, EVAL_VERSION = 20240522, 1
MODEL_MAGIC, MODEL_FP32, MODEL_BF16 = 20240326, 3, 5
STATE_MAGIC, STATE_VERSION = 20240327, 2
TOKENIZER_MAGIC, TOKENIZER_VERSION = 20240328, 2
EXAMPLE_START = 65535  # first uint16 of every eval example


# ----------------------------------------------------------------------------- helpers

@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success fsync and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def make_header(*values: int) -> np.ndarray:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[: len(values)] = values
    return header


def read_magic(path: str | os.PathLike) -> int | None:
    """A file's first int32, which says what llm.c file it is; None for a file shorter than that (the
    readers' size checks name it). A missing file raises OSError, as opening it would."""
    with open(path, "rb") as f:
        head = f.read(4)
    return int(np.frombuffer(head, "<i4")[0]) if len(head) == 4 else None


def read_header(path: str | os.PathLike, magic: int, versions: tuple[int, ...], what: str) -> np.ndarray:
    """Read and check a 256-int32 header; returns it as an int64 array."""
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise LlmcError(f"{path}: too short for a {what} header ({len(raw)} bytes)")
    header = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if header[0] != magic:
        raise LlmcError(f"{path}: bad magic {header[0]} (expected {magic}): not a {what} file")
    if header[1] not in versions:
        raise LlmcError(f"{path}: unsupported {what} version {header[1]} (expected {' or '.join(map(str, versions))})")
    return header


def check_size(path: str | os.PathLike, expected: int, what: str, at_least: bool = False) -> None:
    size = os.path.getsize(path)
    if size < expected or (size != expected and not at_least):
        raise LlmcError(f"{path}: {what} file has {size} bytes, expected {expected}"
                        + (" (truncated)" if size < expected else ""))


# ----------------------------------------------------------------------------- bf16

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16) with round-to-nearest-even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    rounded = np.where(np.isnan(x), (bits >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- token shards

def write_shard(path: str | os.PathLike, tokens: np.ndarray, model_desc: str = "gpt-2") -> None:
    """A training/validation shard: header [magic, version, ntok], then ntok tokens in model_desc's dtype."""
    magic, version, dtype = SHARD_FORMATS[model_desc]
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        raise LlmcError(f"{path}: token ids must fit in {np.dtype(dtype).name} ({model_desc})")
    with atomic_write(path) as f:
        f.write(make_header(magic, version, tokens.size).tobytes())
        f.write(tokens.astype(dtype).tobytes())


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a token shard (read-only), checking its header and length: uint16 tokens under
    gpt-2's magic, uint32 under llama-3's."""
    kinds = {magic: (version, dtype) for magic, version, dtype in SHARD_FORMATS.values()}
    magic = read_magic(path)
    if magic not in kinds and os.path.getsize(path) >= HEADER_BYTES:
        raise LlmcError(f"{path}: bad magic {magic} (expected {SHARD_MAGIC} for gpt-2 or {LLAMA3_SHARD_MAGIC} "
                        f"for llama-3): not a token shard file")
    version, dtype = kinds.get(magic, kinds[SHARD_MAGIC])  # an unknown magic here means a short file
    ntok = int(read_header(path, magic, (version,), "token shard")[2])
    check_size(path, HEADER_BYTES + np.dtype(dtype).itemsize * ntok, "token shard")
    if ntok == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(ntok,))


# ----------------------------------------------------------------------------- eval shards

@dataclass
class EvalExample:
    index: int  # position in the dataset
    label: int  # index of the correct completion
    context: list[int]  # context tokens
    completions: list[list[int]]  # candidate completions (tokenized with a leading space)


def encode_eval_example(ex: EvalExample) -> np.ndarray:
    body = [ex.index, ex.label, len(ex.completions), len(ex.context), *ex.context]
    for c in ex.completions:
        body += [len(c), *c]
    words = [EXAMPLE_START, 0, *body]
    words[1] = 2 * len(words)  # the example's size in bytes, itself included
    arr = np.asarray(words, dtype=np.int64)
    if arr.max() >= 2**16 or arr.min() < 0:
        raise LlmcError(f"eval example {ex.index} does not fit in uint16 fields")
    return arr.astype("<u2")


def write_eval_shard(path: str | os.PathLike, examples: list[EvalExample]) -> None:
    """llm.c's eval file (HellaSwag, MMLU): header [magic, 1, n examples, longest example bytes]."""
    encoded = [encode_eval_example(ex) for ex in examples]
    longest = max((e.nbytes for e in encoded), default=0)
    with atomic_write(path) as f:
        f.write(make_header(EVAL_MAGIC, EVAL_VERSION, len(encoded), longest).tobytes())
        for e in encoded:
            f.write(e.tobytes())


def read_eval_shard(path: str | os.PathLike) -> list[EvalExample]:
    header = read_header(path, EVAL_MAGIC, (EVAL_VERSION,), "eval shard")
    n = int(header[2])
    data = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES).astype(np.int64)
    examples, pos = [], 0
    try:
        for _ in range(n):
            if data[pos] != EXAMPLE_START:
                raise LlmcError(f"{path}: example {len(examples)} does not start with {EXAMPLE_START}")
            nbytes = int(data[pos + 1])
            if nbytes < 12 or nbytes % 2:  # 6 uint16 of fixed fields at least
                raise LlmcError(f"{path}: example {len(examples)} has a bad size field ({nbytes} bytes)")
            words = data[pos: pos + nbytes // 2]
            if len(words) != nbytes // 2:
                raise IndexError
            index, label, ncomp, nctx = (int(w) for w in words[2:6])
            context = words[6: 6 + nctx].tolist()
            cur, completions = 6 + nctx, []
            for _ in range(ncomp):
                k = int(words[cur])
                completions.append(words[cur + 1: cur + 1 + k].tolist())
                cur += 1 + k
            if cur != len(words) or (ncomp and label >= ncomp):
                raise LlmcError(f"{path}: example {len(examples)} is malformed")
            examples.append(EvalExample(index, label, context, completions))
            pos += nbytes // 2
    except IndexError:
        raise LlmcError(f"{path}: eval shard is truncated at example {len(examples)}") from None
    if pos != len(data):
        raise LlmcError(f"{path}: {len(data) - pos} trailing uint16 after {n} examples")
    return examples


# ----------------------------------------------------------------------------- model checkpoints

def model_header(cfg: GPTConfig, version: int) -> np.ndarray:
    return make_header(MODEL_MAGIC, version, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers,
                       cfg.num_heads, cfg.channels, cfg.padded_vocab_size)


def read_model_config(path: str | os.PathLike) -> tuple[GPTConfig, int]:
    """The config and version (3 = fp32, 5 = bf16) of a model checkpoint."""
    h = read_header(path, MODEL_MAGIC, (MODEL_FP32, MODEL_BF16), "model checkpoint")
    try:
        cfg = GPTConfig(max_seq_len=int(h[2]), vocab_size=int(h[3]), num_layers=int(h[4]),
                        num_heads=int(h[5]), channels=int(h[6]), padded_vocab_size=int(h[7]))
    except LlmcError as e:
        raise LlmcError(f"{path}: bad model header: {e}") from None
    return cfg, int(h[1])


def read_model(path: str | os.PathLike) -> tuple[GPTConfig, np.ndarray]:
    """A model checkpoint as (config, flat fp32 parameters in llm.c order); bf16 is upcast."""
    cfg, version = read_model_config(path)
    return cfg, read_model_params(path, HEADER_BYTES, num_parameters(cfg), version, "model checkpoint")


def write_model(path: str | os.PathLike, cfg: GPTConfig, params: np.ndarray, dtype: str = "fp32") -> None:
    """Write flat parameters (llm.c order) as a v3 fp32 or v5 bf16 checkpoint."""
    write_model_file(path, params, num_parameters(cfg), dtype,
                     lambda version: model_header(cfg, version).tobytes())


def read_model_params(path: str | os.PathLike, offset: int, n: int, version: int, what: str) -> np.ndarray:
    """A model file's n parameters after its headers (offset bytes), v3 fp32 or v5 bf16 (upcast): flat fp32."""
    fp32 = version == MODEL_FP32
    check_size(path, offset + n * (4 if fp32 else 2), what)
    raw = np.fromfile(path, dtype="<f4" if fp32 else "<u2", count=n, offset=offset)
    return (raw if fp32 else bf16_bits_to_f32(raw)).astype(np.float32, copy=False)


def write_model_file(path: str | os.PathLike, params: np.ndarray, n: int, dtype: str,
                     headers: Callable[[int], bytes]) -> None:
    """A model file of n parameters: headers(version) then the parameters, v3 fp32 or v5 bf16 (rounded to
    nearest even), written atomically."""
    if dtype not in ("fp32", "bf16"):
        raise LlmcError(f"model dtype must be fp32 or bf16, not {dtype!r}")
    if params.size != n:
        raise LlmcError(f"{path}: {params.size} parameters given, the config needs {n}")
    flat = params.reshape(-1)
    with atomic_write(path) as f:
        f.write(headers(MODEL_FP32 if dtype == "fp32" else MODEL_BF16))
        for lo in range(0, n, 1 << 24):  # in chunks: the conversion's temporaries stay small
            part = flat[lo: lo + (1 << 24)]
            f.write((np.asarray(part, dtype="<f4") if dtype == "fp32" else f32_to_bf16_bits(part).astype("<u2"))
                    .tobytes())


# ----------------------------------------------------------------------------- debug states

@dataclass
class DebugState:
    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    logits: np.ndarray  # (B, T, V) fp32, unpadded
    loss: float
    grads: np.ndarray  # flat fp32 in parameter order (wte grads padded to Vp)
    ref_losses: np.ndarray | None = None  # optional trailer: losses of training steps 0..n-1


def read_debug_state(path: str | os.PathLike, cfg: GPTConfig) -> DebugState:
    h = read_header(path, STATE_MAGIC, (STATE_VERSION,), "debug state")
    B, T = int(h[2]), int(h[3])
    if B < 1 or T < 1:
        raise LlmcError(f"{path}: debug state has batch B={B}, T={T}; both must be >= 1")
    V = cfg.vocab_size
    nparams = num_parameters(cfg)
    counts = [B * T, B * T, B * T * V, 1, nparams]
    body = HEADER_BYTES + 4 * sum(counts)
    check_size(path, body, "debug state", at_least=True)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        x, y, logits, loss, grads = (np.fromfile(f, dtype="<i4" if i < 2 else "<f4", count=c) for i, c in enumerate(counts))
        rest = f.read()
    ref_losses = None
    if rest:
        n = int(np.frombuffer(rest[:4], dtype="<i4")[0]) if len(rest) >= 4 else -1
        if n < 0 or len(rest) != 4 + 4 * n:
            raise LlmcError(f"{path}: {len(rest)} trailing bytes are not a loss trailer (int32 n, n float32)")
        ref_losses = np.frombuffer(rest[4:], dtype="<f4").copy()
    if x.min(initial=0) < 0 or x.max(initial=0) >= V or y.min(initial=0) < 0 or y.max(initial=0) >= V:
        raise LlmcError(f"{path}: token ids outside the model's vocab ({V}); does the state belong to this model?")
    return DebugState(x.reshape(B, T), y.reshape(B, T), logits.reshape(B, T, V), float(loss[0]), grads, ref_losses)


def write_debug_state(path: str | os.PathLike, state: DebugState) -> None:
    B, T = state.inputs.shape
    with atomic_write(path) as f:
        f.write(make_header(STATE_MAGIC, STATE_VERSION, B, T).tobytes())
        f.write(np.ascontiguousarray(state.inputs, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(state.targets, dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(state.logits, dtype="<f4").tobytes())
        f.write(np.asarray([state.loss], dtype="<f4").tobytes())
        f.write(np.ascontiguousarray(state.grads, dtype="<f4").tobytes())
        if state.ref_losses is not None:
            f.write(np.asarray([len(state.ref_losses)], dtype="<i4").tobytes())
            f.write(np.asarray(state.ref_losses, dtype="<f4").tobytes())


# ----------------------------------------------------------------------------- tokenizer

def write_tokenizer(path: str | os.PathLike, token_bytes: list[bytes], eot: int) -> None:
    """llm.c's tokenizer file: header [magic, 2, n, eot], then per token a uint8 length and bytes."""
    with atomic_write(path) as f:
        f.write(make_header(TOKENIZER_MAGIC, TOKENIZER_VERSION, len(token_bytes), eot).tobytes())
        for i, b in enumerate(token_bytes):
            if not 0 < len(b) < 256:
                raise LlmcError(f"token {i} has {len(b)} bytes; llm.c stores 1..255")
            f.write(bytes([len(b)]) + b)


def read_tokenizer(path: str | os.PathLike) -> tuple[list[bytes], int]:
    """(token bytes by id, EOT id)."""
    h = read_header(path, TOKENIZER_MAGIC, (TOKENIZER_VERSION,), "tokenizer")
    n, eot = int(h[2]), int(h[3])
    data = Path(path).read_bytes()[HEADER_BYTES:]
    tokens, pos = [], 0
    for i in range(n):
        if pos >= len(data) or pos + 1 + data[pos] > len(data):
            raise LlmcError(f"{path}: tokenizer is truncated at token {i} of {n}")
        tokens.append(data[pos + 1: pos + 1 + data[pos]])
        pos += 1 + data[pos]
    if pos != len(data):
        raise LlmcError(f"{path}: {len(data) - pos} trailing bytes after {n} tokens")
    return tokens, eot

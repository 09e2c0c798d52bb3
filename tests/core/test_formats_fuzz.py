"""Fuzzed files never crash the readers: they load, or raise LlmcError (one clear line), nothing else."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmc.core import checkpoint, formats
from llmc.core.config import GPTConfig
from llmc.core.errors import LlmcError

CFG = GPTConfig(max_seq_len=4, vocab_size=5, padded_vocab_size=8, num_layers=1, num_heads=1, channels=2)

# kind: magic, accepted versions, reader
READERS = {
    "shard": (formats.SHARD_MAGIC, (1,), lambda p: int(formats.read_shard(p).sum())),
    "eval": (formats.EVAL_MAGIC, (1,), formats.read_eval_shard),
    "model": (formats.MODEL_MAGIC, (3, 5), formats.read_model),
    "tokenizer": (formats.TOKENIZER_MAGIC, (2,), formats.read_tokenizer),
    "debug": (formats.STATE_MAGIC, (2,), lambda p: formats.read_debug_state(p, CFG)),
    "state": (checkpoint.STATE_MAGIC, (1,), lambda p: checkpoint.read_state(p, 6)),
}
field = st.one_of(st.integers(0, 12), st.integers(-2**31, 2**31 - 1))
# payload words: small counts, eval-example markers, anything
word = st.one_of(st.integers(0, 12), st.just(65535), st.integers(0, 65535))


@st.composite
def files(draw, magic: int, versions: tuple[int, ...]) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[0] = draw(st.one_of(st.just(magic), field))
    header[1] = draw(st.one_of(st.sampled_from(versions), field))
    header[2:8] = draw(st.lists(field, min_size=6, max_size=6))  # sizes and counts of every format
    for i in draw(st.lists(st.integers(8, 40), max_size=6)):  # the state file's step, RNG, loader fields
        header[i] = draw(field)
    body = np.asarray(draw(st.lists(word, max_size=300)), dtype="<u2").tobytes()
    return header.tobytes()[: draw(st.sampled_from([1024, 1024, 1024, 7]))] + body + draw(st.binary(max_size=3))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.mark.parametrize("kind", READERS)
def test_readers_fail_only_with_llmc_error(kind, scratch):
    magic, versions, reader = READERS[kind]

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(files(magic, versions))
    def check(data: bytes):
        path = scratch / f"{kind}.bin"
        path.write_bytes(data)
        try:
            reader(path)
        except LlmcError as e:
            assert "\n" not in str(e)

    check()


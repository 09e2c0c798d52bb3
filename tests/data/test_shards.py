import itertools
import os

import numpy as np
import pytest

from llmc.core.errors import LlmcError
from llmc.core.formats import read_shard, write_shard
from llmc.data import shards
from llmc.data.shards import TokenStream, text_pieces, tokenize, write_sharded, write_tokens

from .util import EOT, docs_tokens, shard_tokens


def chunks_of(tokens: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.choice(np.arange(1, tokens.size), size=min(20, tokens.size - 1), replace=False))
    return np.split(tokens, cuts)


def test_token_stream_cuts_exactly():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=1000, dtype=np.uint16)
    stream = TokenStream(chunks_of(tokens, rng))
    parts = [np.concatenate(list(stream.take(n))) for n in (1, 99, 300, 1)]
    assert [p.size for p in parts] == [1, 99, 300, 1]
    rest = list(stream.take(None))
    assert stream.exhausted() and list(stream.take(5)) == []
    np.testing.assert_array_equal(np.concatenate(parts + rest), tokens)


def test_write_tokens_is_write_shard(tmp_path):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50257, size=4321, dtype=np.uint16)
    w = write_tokens(tmp_path / "streamed.bin", chunks_of(tokens, rng))
    write_shard(tmp_path / "whole.bin", tokens)
    assert w.count == 4321 and w.unit == "tokens"
    assert (tmp_path / "streamed.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    np.testing.assert_array_equal(read_shard(tmp_path / "streamed.bin"), tokens)
    write_tokens(tmp_path / "empty.bin", [])
    assert shard_tokens(tmp_path / "empty.bin").size == 0


@pytest.mark.parametrize("total, size", [(10_000, 3000), (9000, 3000), (2999, 3000), (1, 1)])
def test_write_sharded_layout(tmp_path, total, size):
    rng = np.random.default_rng(total)
    tokens = rng.integers(0, 50257, size=total, dtype=np.uint16)
    written = write_sharded(chunks_of(tokens, rng) if total > 1 else [tokens], tmp_path, "fineweb", size)
    n = -(-total // size)  # the last shard keeps the remainder; no empty shard after an exact fit
    names = ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n)]
    assert [w.path.name for w in written] == names
    assert sorted(names) == sorted(p.name for p in tmp_path.iterdir())
    got = [shard_tokens(tmp_path / name) for name in names]
    assert [g.size for g in got] == [size] * (n - 1) + [total - size * (n - 1)]
    np.testing.assert_array_equal(np.concatenate(got), tokens)


def test_interrupted_write_leaves_nothing(tmp_path):
    def chunks():
        yield np.arange(100, dtype=np.uint16)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_tokens(tmp_path / "x.bin", chunks())
    assert os.listdir(tmp_path) == []


def test_shard_token_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "MAX_SHARD_TOKENS", 50)
    with pytest.raises(LlmcError, match="int32"):
        write_tokens(tmp_path / "x.bin", [np.zeros(30, np.uint16), np.zeros(30, np.uint16)])
    assert os.listdir(tmp_path) == []
    with pytest.raises(LlmcError, match="shard size"):
        write_sharded([], tmp_path, "fineweb", 51)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["the", " King", "'s", "\n\n", " naïve", "<|endoftext|>", " 42", "東京", "  ", "\t", "don't", " a"]
    return ["".join(rng.choice(words, size=rng.integers(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("start_method", sorted({shards.START_METHOD, "spawn"}))
def test_multiprocess_equals_single_process(ref_enc, monkeypatch, start_method):
    monkeypatch.setattr(shards, "BATCH_CHARS", 500)
    monkeypatch.setattr(shards, "START_METHOD", start_method)
    docs = texts(400)
    single = np.concatenate(list(tokenize(text_pieces(docs), workers=1, progress=False)))
    multi = list(tokenize(text_pieces(docs), workers=2, progress=False))
    assert len(multi) > 10  # many batches went through the pool
    np.testing.assert_array_equal(np.concatenate(multi), single)
    np.testing.assert_array_equal(single, docs_tokens(ref_enc, docs))


def test_tokenize_streams(monkeypatch):
    monkeypatch.setattr(shards, "BATCH_CHARS", 200)
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield f"document number {i}"

    stream = TokenStream(tokenize(text_pieces(endless()), workers=2, progress=False))
    first = np.concatenate(list(stream.take(5000)))
    assert first.size == 5000 and first[0] == EOT
    assert pulled < 5000  # ~6 tokens a document: read only a few batches ahead, never the whole input

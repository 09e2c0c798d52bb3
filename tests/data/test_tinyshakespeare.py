import numpy as np

from llmc.data import shards

from .util import ASSETS, EOT, run_prepro, shard_tokens

CORPUS = ASSETS / "shakespeare.txt"


def llmc_rules(enc, text: str, eot: int = EOT) -> np.ndarray:
    """tinyshakespeare.py's tokens: EOT (llama-3: BOS) before each "\\n\\n" section, which keeps its "\\n\\n"
    (not the last)."""
    sections = text.split("\n\n")
    tokens = []
    for i, s in enumerate(sections):
        tokens.append(eot)
        tokens.extend(enc.encode_ordinary(s + "\n\n" if i != len(sections) - 1 else s))
    return np.array(tokens, dtype=np.int64)


def test_shipped_corpus_matches_independent_encoding(tmp_path, ref_enc):
    result = run_prepro("tinyshakespeare", "--input", str(CORPUS), "-o", str(tmp_path), "-p", "1")
    assert result.exit_code == 0, result.output
    expected = llmc_rules(ref_enc, open(CORPUS).read())
    val = shard_tokens(tmp_path / "tiny_shakespeare_val.bin")
    train = shard_tokens(tmp_path / "tiny_shakespeare_train.bin")
    assert val.size == 32768 and train.size == expected.size - 32768 > 250_000
    np.testing.assert_array_equal(val, expected[:32768])
    np.testing.assert_array_equal(train, expected[32768:])
    assert f"{train.size:,} tokens" in result.output and f"{expected.size:,} tokens" in result.output


def test_builtin_and_multiprocess_give_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "BATCH_CHARS", 50_000)  # ~20 batches through the pool
    assert run_prepro("tinyshakespeare", "--input", str(CORPUS), "-o", str(tmp_path / "a"), "-p", "1").exit_code == 0
    result = run_prepro("tinyshakespeare", "--builtin", "-o", str(tmp_path / "b"), "-p", "2")
    assert result.exit_code == 0, result.output
    for name in ("tiny_shakespeare_val.bin", "tiny_shakespeare_train.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_windows_newlines_read_as_llmc_reads_them(tmp_path, ref_enc):
    text = "First Citizen:\nSpeak, speak.\n\nAll:\nResolved.\n\n\nSecond Citizen:\nOne word"
    (tmp_path / "crlf.txt").write_bytes(text.replace("\n", "\r\n").encode())
    result = run_prepro("tinyshakespeare", "--input", str(tmp_path / "crlf.txt"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(shard_tokens(tmp_path / "out/tiny_shakespeare_val.bin"), llmc_rules(ref_enc, text))
    assert shard_tokens(tmp_path / "out/tiny_shakespeare_train.bin").size == 0  # llm.c writes it empty too

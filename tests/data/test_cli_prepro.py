import json

import pytest

from .util import one_error_line, run_prepro


def test_help():
    result = run_prepro("--help")
    assert result.exit_code == 0
    for text in ("tinyshakespeare", "tinystories", "edu_fineweb", "hellaswag", "mmlu", "--out-dir", "--input",
                 "--builtin", "--shard-size", "--workers", "Example: llmc prepro tinyshakespeare --builtin"):
        assert text in result.output


def test_missing_input(tmp_path):
    line = one_error_line(run_prepro("fineweb", "--input", str(tmp_path / "nope"), "-o", str(tmp_path / "out")))
    assert "nope: no such file or folder" in line


def test_unreadable_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    line = one_error_line(run_prepro("fineweb", "--input", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "out")))
    assert "bad.parquet" in line and "parquet" in line
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "", "no documents"),
    ("d.jsonl", '{"text": "a"}\n{"txt": "b"}\n', "row 1 has no field text"),
    ("d.json", '{"text": "a"}', "expected a JSON list"),
    ("d.jsonl", '{"text": "a"}\n{"text": ', "not valid JSONL"),
])
def test_bad_documents(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    line = one_error_line(run_prepro("fineweb", "--input", str(tmp_path / name), "-o", str(tmp_path / "out"), "-p", "1"))
    assert message in line
    assert list((tmp_path / "out").iterdir()) == []  # nothing left under a final name


@pytest.mark.parametrize("args, message", [
    (["tinyshakespeare", "--version", "100B"], "--version and --shard-size apply only to fineweb"),
    (["hellaswag", "-s", "1000"], "--version and --shard-size apply only to fineweb"),
    (["mmlu", "--builtin"], "--builtin applies only to tinyshakespeare"),
    (["tinyshakespeare", "--builtin", "--input", "x.txt"], "not both"),
])
def test_misplaced_options(tmp_path, args, message):
    assert message in one_error_line(run_prepro(*args, "-o", str(tmp_path)))


def test_bad_shard_size():
    result = run_prepro("fineweb", "-s", "1.5")
    assert result.exit_code == 2 and "not a positive whole number" in result.output


def test_offline_without_input(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    line = one_error_line(run_prepro("tinyshakespeare", "-o", str(tmp_path / "ts")))
    assert "HF_HUB_OFFLINE" in line and "--input" in line
    for name in ("fineweb", "mmlu", "tinystories"):
        line = one_error_line(run_prepro(name, "-o", str(tmp_path / name)))
        assert "HF_HUB_OFFLINE" in line and "--input" in line, name


def test_input_file_for_tinyshakespeare_must_be_text(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"\xff\xfe bad utf-8 \xc3")
    for src, message in ((tmp_path / "t.txt", "not UTF-8 text"), (tmp_path, "takes a text file")):
        assert message in one_error_line(run_prepro("tinyshakespeare", "--input", str(src), "-o", str(tmp_path)))


def test_mmlu_bad_answer(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "q", "choices": list("abcd"), "answer": "E"}) + "\n")
    result = run_prepro("mmlu", "--input", str(tmp_path / "m.jsonl"), "-o", str(tmp_path))
    assert "answer A-D or 0-3" in one_error_line(result)

import json

import numpy as np
import pytest

from llmc.data import shards

from .test_shards import texts
from .util import docs_tokens, run_prepro, shard_tokens

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def docs(tmp_path):
    """300 documents in two parquet files with fineweb's columns; b.parquet is written first, a.parquet comes first."""
    docs = texts(300, seed=7) + ["", "x" * 3000]
    folder = tmp_path / "parquet"
    (folder / "sample").mkdir(parents=True)
    for name, part in (("sample/b.parquet", docs[150:]), ("a.parquet", docs[:150])):
        table = pa.table({"id": [f"<urn:{i}>" for i in range(len(part))], "text": part, "token_count": [0] * len(part)})
        pq.write_table(table, folder / name, row_group_size=40)
    return docs, folder


def shards_of(out, name="fineweb"):
    files = sorted(out.glob(f"{name}_*.bin"), key=lambda p: p.name[-10:])
    return [p.name for p in files], [shard_tokens(p) for p in files]


def test_parquet_shards_and_val_split(tmp_path, docs, ref_enc):
    texts_, folder = docs
    result = run_prepro("fineweb", "--input", str(folder), "-o", str(tmp_path / "out"), "-s", "2e3", "-p", "1")
    assert result.exit_code == 0, result.output
    expected = docs_tokens(ref_enc, texts_)
    names, got = shards_of(tmp_path / "out")
    n = -(-expected.size // 2000)
    assert n >= 3
    assert names == ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n)]
    assert all(g.size == 2000 for g in got[:-1]) and 0 < got[-1].size <= 2000
    np.testing.assert_array_equal(np.concatenate(got), expected)


def test_jsonl_json_and_multiprocess_match_parquet(tmp_path, docs, monkeypatch):
    texts_, folder = docs
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "url": "u"}) + "\n" for t in texts_))
    (tmp_path / "d.json").write_text(json.dumps([{"text": t} for t in texts_]))
    monkeypatch.setattr(shards, "BATCH_CHARS", 2000)
    runs = {"parquet": (folder, "1"), "jsonl": (tmp_path / "d.jsonl", "1"), "json": (tmp_path / "d.json", "1"),
            "parquet-p2": (folder, "2")}
    outputs = {}
    for key, (src, workers) in runs.items():
        result = run_prepro("fineweb", "--input", str(src), "-o", str(tmp_path / "out" / key), "-s", "1500", "-p", workers)
        assert result.exit_code == 0, result.output
        outputs[key] = {p.name: p.read_bytes() for p in (tmp_path / "out" / key).iterdir()}
    assert len(outputs["parquet"]) >= 4
    assert all(out == outputs["parquet"] for out in outputs.values())


def test_edu_fineweb_names(tmp_path, docs):
    result = run_prepro("edu_fineweb", "--input", str(docs[1]), "-o", str(tmp_path / "out"), "--shard-size", "100_000",
                        "-p", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["edu_fineweb_val_000000.bin"]


def test_big_row_groups_are_split_in_the_main_process(tmp_path, docs, monkeypatch):
    from llmc.data import sources
    args = ["fineweb", "--input", str(docs[1]), "-s", "1500", "-p", "1"]
    assert run_prepro(*args, "-o", str(tmp_path / "whole")).exit_code == 0
    monkeypatch.setattr(sources, "ROW_GROUP_BYTES", 1)
    assert run_prepro(*args, "-o", str(tmp_path / "split")).exit_code == 0
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}
    assert whole == {p.name: p.read_bytes() for p in (tmp_path / "split").iterdir()} and len(whole) > 3


@pytest.mark.parametrize("column, message", [
    (["a", None], "1 rows have no 'text' (null)"),
    ([1, 2], "column 'text' holds int64, not text"),
])
def test_bad_parquet_text(tmp_path, column, message):
    pq.write_table(pa.table({"text": column}), tmp_path / "bad.parquet")
    result = run_prepro("fineweb", "--input", str(tmp_path / "bad.parquet"), "-o", str(tmp_path / "out"), "-p", "1")
    assert result.exit_code == 1 and message in result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_worker_error_reaches_the_cli_and_leaves_only_whole_shards(tmp_path):
    rows = texts(200, seed=3) + [None] + texts(50, seed=4)  # the bad row is in the last row group
    pq.write_table(pa.table({"text": rows}), tmp_path / "d.parquet", row_group_size=25)
    result = run_prepro("fineweb", "--input", str(tmp_path / "d.parquet"), "-o", str(tmp_path / "out"), "-s", "500",
                        "-p", "2")
    assert result.exit_code == 1 and "1 rows have no 'text' (null)" in result.output
    left = sorted((tmp_path / "out").iterdir())
    assert left and all(p.name.endswith(".bin") and not p.name.startswith(".") for p in left)
    assert all(shard_tokens(p).size == 500 for p in left)  # complete shards only, nothing half-written

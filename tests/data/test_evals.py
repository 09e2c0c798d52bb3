import csv
import io
import json
import tarfile

import numpy as np
import pytest

from llmc.core.formats import read_eval_shard

from .util import run_prepro

HELLASWAG = [
    {"ind": 24, "ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                 "starts pulling up roofing on a roof."]},
    {"ind": 92, "ctx": "Then, the man writes over the snow covering the window of a car", "label": 0,
     "endings": ["in the middle of the ice.", "naïve 東京 <|endoftext|>", "", "walks"]},
    {"ind": 7, "ctx": "x" * 300, "label": 1, "endings": ["a", "b b", "c  c", "d\n\nd"]},
]
MMLU = [  # (file, question, choices, answer letter)
    ("abstract_algebra_test.csv", "Find the degree of Q(sqrt(2)) over Q.", ["0", "4", "2", "6"], "C"),
    ("abstract_algebra_test.csv", "Is 1, 2 a \"pair\"?", ["yes", "no, 1.50", "maybe", "x"], "A"),
    ("anatomy_test.csv", "Which bone?\nPick one.", ["femur", "ulna", "radius", "tibia"], "D"),
]


def llmc_eval_file(enc, examples: list[tuple[list[int], list[list[int]], int]]) -> bytes:
    """data_common.py's write_evalfile, written out: header [20240522, 1, n, longest], then per example
    65535, its size in bytes, its position, label, 4, the context and each completion, each length-prefixed."""
    stream, longest = [], 0
    for idx, (ctx, endings, label) in enumerate(examples):
        ex = [2**16 - 1, 0, idx, label, len(endings), len(ctx), *ctx]
        for e in endings:
            ex += [len(e), *e]
        ex[1] = 2 * len(ex)
        longest = max(longest, ex[1])
        stream += ex
    header = np.zeros(256, dtype="<i4")
    header[:4] = [20240522, 1, len(examples), longest]
    return header.tobytes() + np.array(stream, dtype="<u2").tobytes()


def hellaswag_expected(enc) -> bytes:
    return llmc_eval_file(enc, [(enc.encode(ex["ctx"], disallowed_special=()),
                                 [enc.encode(" " + e, disallowed_special=()) for e in ex["endings"]], ex["label"])
                                for ex in HELLASWAG])


def test_hellaswag_jsonl(tmp_path, ref_enc):
    (tmp_path / "hellaswag_val.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in HELLASWAG))
    result = run_prepro("hellaswag", "--input", str(tmp_path / "hellaswag_val.jsonl"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    data = (tmp_path / "out/hellaswag_val.bin").read_bytes()
    assert data == hellaswag_expected(ref_enc)
    assert [e.index for e in read_eval_shard(tmp_path / "out/hellaswag_val.bin")] == [0, 1, 2]
    assert "3 examples" in result.output


def test_hellaswag_hub_parquet_with_string_labels(tmp_path, ref_enc):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rows = [{**ex, "label": str(ex["label"])} for ex in HELLASWAG]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    result = run_prepro("hellaswag", "--input", str(tmp_path / "validation.parquet"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out/hellaswag_val.bin").read_bytes() == hellaswag_expected(ref_enc)


def test_hellaswag_needs_four_endings(tmp_path):
    (tmp_path / "h.jsonl").write_text(json.dumps({**HELLASWAG[0], "endings": ["a", "b"]}) + "\n")
    result = run_prepro("hellaswag", "--input", str(tmp_path / "h.jsonl"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1 and "4 endings" in result.output
    assert not (tmp_path / "out/hellaswag_val.bin").exists()


def mmlu_expected(enc) -> bytes:
    return llmc_eval_file(enc, [(enc.encode(f"Question: {q}\n\nAnswer:"), [enc.encode(" " + c) for c in choices],
                                 "ABCD".index(a)) for _, q, choices, a in MMLU])


def write_csvs(folder) -> None:
    for name in sorted({m[0] for m in MMLU}, reverse=True):
        buf = io.StringIO()
        csv.writer(buf).writerows([q, *choices, a] for f, q, choices, a in MMLU if f == name)
        (folder / "data/test").mkdir(parents=True, exist_ok=True)
        (folder / "data/test" / name).write_text(buf.getvalue())
    (folder / "data/dev").mkdir()
    (folder / "data/dev/anatomy_dev.csv").write_text("not,a,test,question,at,A\n")


def test_mmlu_csv_folder_tar_and_parquet(tmp_path, ref_enc):
    write_csvs(tmp_path / "berkeley")
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(tmp_path / "berkeley/data", arcname="data")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": q, "subject": f[:-9], "choices": c, "answer": "ABCD".index(a)}
                                         for f, q, c, a in MMLU]), tmp_path / "test.parquet")
    expected = mmlu_expected(ref_enc)
    for src in ("berkeley", "data.tar", "test.parquet"):
        result = run_prepro("mmlu", "--input", str(tmp_path / src), "-o", str(tmp_path / "out" / src))
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / src / "mmlu_test.bin").read_bytes() == expected, src

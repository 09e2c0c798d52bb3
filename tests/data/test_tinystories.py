import json
import random
import tarfile

import numpy as np

from .test_shards import texts
from .util import EOT, run_prepro, shard_tokens


def llmc_split(enc, files: list[list[str]], eot: int = EOT) -> np.ndarray:
    """tinystories.py for one split: file i's stories shuffled by Random(1337 + i), stripped, EOT-separated
    (llama-3: BOS)."""
    tokens = []
    for i, stories in enumerate(files):
        data = [{"story": s} for s in stories]
        random.Random(1337 + i).shuffle(data)
        for example in data:
            tokens.append(eot)
            tokens.extend(enc.encode_ordinary(example["story"].strip()))
    return np.array(tokens, dtype=np.int64)


def make_files(folder) -> list[list[str]]:
    folder.mkdir()
    files = [[f"  Once upon a time {t}\n" for t in texts(n, seed=n)] for n in (40, 30, 25)]
    for i, stories in enumerate(files):
        rows = [{"story": s, "instruction": {"words": []}, "source": "GPT-4"} for s in stories]
        (folder / f"data{i:02d}.json").write_text(json.dumps(rows))
    return files


def test_json_files_val_first_and_shuffled(tmp_path, ref_enc):
    files = make_files(tmp_path / "src")
    result = run_prepro("tinystories", "--input", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "-p", "1")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(shard_tokens(tmp_path / "out/TinyStories_val.bin"), llmc_split(ref_enc, files[:1]))
    # the train split restarts the shard index at 0: data01 is shuffled by Random(1337)
    np.testing.assert_array_equal(shard_tokens(tmp_path / "out/TinyStories_train.bin"), llmc_split(ref_enc, files[1:]))


def test_archive_unpacked_beside_the_shards_and_multiprocess(tmp_path):
    make_files(tmp_path / "src")
    with tarfile.open(tmp_path / "TinyStories_all_data.tar.gz", "w:gz") as tar:
        for p in sorted((tmp_path / "src").iterdir(), reverse=True):  # archive order must not matter
            tar.add(p, arcname=p.name)
    assert run_prepro("tinystories", "--input", str(tmp_path / "src"), "-o", str(tmp_path / "a"), "-p", "1").exit_code == 0
    archive = tmp_path / "TinyStories_all_data.tar.gz"
    result = run_prepro("tinystories", "--input", str(archive), "-o", str(tmp_path / "b"), "-p", "2")
    assert result.exit_code == 0, result.output
    unpacked = sorted(p.name for p in (tmp_path / "b/TinyStories_all_data").iterdir())
    assert unpacked == ["data00.json", "data01.json", "data02.json"]
    for name in ("TinyStories_val.bin", "TinyStories_train.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_one_file_is_not_enough(tmp_path):
    (tmp_path / "one.jsonl").write_text(json.dumps({"story": "The end."}) + "\n")
    result = run_prepro("tinystories", "--input", str(tmp_path / "one.jsonl"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1 and "at least 2 files" in result.output
    assert not list((tmp_path / "out").iterdir())

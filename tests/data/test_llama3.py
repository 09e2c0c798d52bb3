"""prepro -m llama-3: llm.c's llama3-branch shards (magic 20240801, version 7, uint32 tokens, BOS before
every document) from two tiny Llama-3-style tokenizers built here: Meta's kind (a tiktoken ranks file,
its special tokens right after the ranks) and a Hugging Face folder. The expected tokens come from
tiktoken and the tokenizers library directly, with llm.c's rules written out in the tests."""

import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from llmc.core.dataloader import DataLoader
from llmc.data import llama3_tokenizer, shards

from .test_shards import texts
from .test_tinyshakespeare import CORPUS, llmc_rules
from .test_tinystories import llmc_split, make_files
from .util import docs_tokens, one_error_line, run_prepro, shard_tokens

# Meta's llama3 tokenizer.py split regex, as llm.c's train_llama3.py copies it
PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIAL_TEXT = "a <|begin_of_text|> b <|end_of_text|><|eot_id|>"  # must stay text: split_special_tokens=True


@dataclass
class Ref:
    """An independent encoding: llm.c's tokenizer.encode(text, add_special_tokens=False,
    split_special_tokens=True), and its document delimiter tokenizer.encode('')[0]."""
    bos: int
    encode_ordinary: Callable[[str], list[int]]


def meta_tokenizer_model(folder: Path) -> tuple[Path, Ref]:
    """A tokenizer.model: every byte, every byte pair and a few longer merges, so BOS = 65798 > uint16."""
    import tiktoken

    tokens = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    tokens += [b"the", b" the", b"and", b" and", b"ing", b" of"]
    ranks = {t: i for i, t in enumerate(tokens)}
    folder.mkdir()
    path = folder / "tokenizer.model"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for t, i in ranks.items()))
    special = {"<|begin_of_text|>": len(ranks), "<|end_of_text|>": len(ranks) + 1}
    enc = tiktoken.Encoding("ref", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=special)
    return path, Ref(len(ranks), enc.encode_ordinary)


def byte_chars() -> dict[int, str]:
    """GPT-2's byte-level alphabet (Hugging Face's ByteLevel): printable bytes are themselves, others 256+."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return {b: chr(b if b in printable else next(others)) for b in range(256)}


def hf_folder(folder: Path, bos: bool = True) -> tuple[Path, Ref]:
    """A hand-built byte-level BPE as Llama 3's tokenizer.json is made (its regex, ignore_merges, BOS added
    by the post-processor), with the special tokens at 100000+."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors

    char = byte_chars()
    vocab = {char[b]: b for b in range(256)}
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("a", "n"), ("an", "d"), ("Ġ", "and"), ("i", "n"), ("in", "g"),
              ("Ċ", "Ċ"), ("o", "u"), ("Ġ", "t")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab |= {"<|begin_of_text|>": 100000, "<|end_of_text|>": 100001}
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", 100000)])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>"}))
    ref = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.encode_special_tokens = True
    return folder, Ref(100000, lambda text: ref.encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def meta_tokenizer(tmp_path_factory) -> tuple[Path, Ref]:
    return meta_tokenizer_model(tmp_path_factory.mktemp("meta") / "original")


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory) -> tuple[Path, Ref]:
    return hf_folder(tmp_path_factory.mktemp("hf") / "Tiny-Llama-3")


@pytest.fixture(params=["meta_tokenizer", "hf_tokenizer"])
def tokenizer(request) -> tuple[Path, Ref]:
    return request.getfixturevalue(request.param)


@pytest.fixture
def fresh_load():
    """llmc's tokenizer cache emptied before and after: a test that hides a library loads anew."""
    llama3_tokenizer.load.cache_clear()
    yield
    llama3_tokenizer.load.cache_clear()


def prepro_llama3(tokenizer: Path, *args: str):
    return run_prepro(*args, "-m", "llama-3", "--tokenizer", str(tokenizer))


def test_builtin_tinyshakespeare_is_llmc_llama3(tmp_path, tokenizer):
    path, ref = tokenizer
    result = prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path), "-p", "1")
    assert result.exit_code == 0, result.output
    expected = llmc_rules(ref, CORPUS.read_text(), eot=ref.bos)
    val = shard_tokens(tmp_path / "tiny_shakespeare_val.bin", "llama-3")
    train = shard_tokens(tmp_path / "tiny_shakespeare_train.bin", "llama-3")
    assert val.size == 32768 and train.size == expected.size - 32768 > 32768
    np.testing.assert_array_equal(np.concatenate([val, train]), expected)
    assert ref.bos > 2**16 and (expected == ref.bos).sum() == CORPUS.read_text().count("\n\n") + 1  # no uint16 here


def test_special_token_text_stays_text(tmp_path, tokenizer):
    path, ref = tokenizer
    (tmp_path / "t.txt").write_text(f"{SPECIAL_TEXT}\n\n{SPECIAL_TEXT} the end")
    result = prepro_llama3(path, "tinyshakespeare", "--input", str(tmp_path / "t.txt"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    got = shard_tokens(tmp_path / "out/tiny_shakespeare_val.bin", "llama-3")
    np.testing.assert_array_equal(got, llmc_rules(ref, (tmp_path / "t.txt").read_text(), eot=ref.bos))
    assert (got >= ref.bos).sum() == 2  # the two BOS; the special tokens' text became ordinary tokens


# spawned workers load the tokenizer by its path (a Hugging Face one as well, only slower: transformers' import)
@pytest.mark.parametrize("kind, start_method", [("meta_tokenizer", shards.START_METHOD), ("meta_tokenizer", "spawn"),
                                                ("hf_tokenizer", shards.START_METHOD)])
def test_multiprocess_equals_single_process(tmp_path, request, monkeypatch, kind, start_method):
    path, _ = request.getfixturevalue(kind)
    (tmp_path / "t.txt").write_text(CORPUS.read_text()[:300_000])
    monkeypatch.setattr(shards, "BATCH_CHARS", 30_000)  # ~10 batches through the pool
    monkeypatch.setattr(shards, "START_METHOD", start_method)
    for out, workers in (("a", "1"), ("b", "2")):
        result = prepro_llama3(path, "tinyshakespeare", "--input", str(tmp_path / "t.txt"), "-o", str(tmp_path / out),
                               "-p", workers)
        assert result.exit_code == 0, result.output
    for name in ("tiny_shakespeare_val.bin", "tiny_shakespeare_train.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_fineweb_and_tinystories_documents_start_with_bos(tmp_path, tokenizer):
    path, ref = tokenizer
    docs = texts(200, seed=3) + [SPECIAL_TEXT, ""]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    result = prepro_llama3(path, "fineweb", "--input", str(tmp_path / "d.jsonl"), "-o", str(tmp_path / "fw"),
                           "-s", "3000")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "fw").glob("fineweb_*.bin"), key=lambda p: p.name[-10:])  # val_000000 first
    got = [shard_tokens(p, "llama-3") for p in files]
    assert len(got) >= 3 and all(g.size == 3000 for g in got[:-1])
    np.testing.assert_array_equal(np.concatenate(got), docs_tokens(ref, docs, eot=ref.bos))

    files = make_files(tmp_path / "stories")
    result = prepro_llama3(path, "tinystories", "--input", str(tmp_path / "stories"), "-o", str(tmp_path / "ts"))
    assert result.exit_code == 0, result.output
    for split, split_files in (("val", files[:1]), ("train", files[1:])):
        np.testing.assert_array_equal(shard_tokens(tmp_path / f"ts/TinyStories_{split}.bin", "llama-3"),
                                      llmc_split(ref, split_files, eot=ref.bos))


def test_lone_surrogates_are_replaced_as_tiktoken_does(tmp_path, tokenizer):
    path, ref = tokenizer
    (tmp_path / "d.jsonl").write_text('{"text": "a\\ud800 the b"}\n')  # a JSON escape Python reads as a lone surrogate
    result = prepro_llama3(path, "fineweb", "--input", str(tmp_path / "d.jsonl"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(shard_tokens(tmp_path / "out/fineweb_val_000000.bin", "llama-3"),
                                  docs_tokens(ref, ["a\ufffd the b"], eot=ref.bos))


def test_dataloader_reads_the_llama3_shards(tmp_path, tokenizer):
    path, _ = tokenizer
    assert prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path)).exit_code == 0
    tokens = shard_tokens(tmp_path / "tiny_shakespeare_val.bin", "llama-3")
    B, T = 4, 64
    loader = DataLoader(str(tmp_path / "tiny_shakespeare_val.bin"), B, T, shuffle=False)
    for i in range(3):
        x, y = loader.next_batch()
        assert x.dtype == y.dtype == np.int32
        np.testing.assert_array_equal(x.reshape(-1), tokens[i * B * T: (i + 1) * B * T])
        np.testing.assert_array_equal(y.reshape(-1), tokens[i * B * T + 1: (i + 1) * B * T + 1])


def test_tokenizers_library_without_transformers(tmp_path, hf_tokenizer, monkeypatch, fresh_load):
    path, _ = hf_tokenizer
    pytest.importorskip("transformers")
    assert prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path / "a")).exit_code == 0
    llama3_tokenizer.load.cache_clear()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    result = prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    for name in ("tiny_shakespeare_val.bin", "tiny_shakespeare_train.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_hf_folder_without_either_library(tmp_path, monkeypatch, fresh_load):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    line = one_error_line(prepro_llama3(tmp_path / "tok", "tinyshakespeare", "--builtin", "-o", str(tmp_path / "out")))
    assert "pip install 'llmc[data]'" in line
    assert not (tmp_path / "out").exists()


def test_tokenizer_that_adds_no_bos(tmp_path, fresh_load):
    path, _ = hf_folder(tmp_path / "tok", bos=False)
    line = one_error_line(prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path / "out")))
    assert "adds no BOS" in line and str(path) in line


@pytest.mark.parametrize("name, content, message", [
    ("nope", None, "nope: no such file or folder"),
    ("text.model", "Hello there\n", "not a tiktoken BPE ranks file"),
    ("gap.model", "YQ== 0\nYg== 5\n", "not a tiktoken BPE ranks file"),  # ranks must be 0..n-1
    ("empty", "", "no tokenizer.json in this folder; --tokenizer takes"),
    ("original", "tokenizer.model", "pass Meta's file itself"),  # Meta's download: tokenizer.model, no tokenizer.json
    ("broken", "tokenizer.json", "not a Hugging Face tokenizer"),
])
def test_bad_tokenizer_path(tmp_path, name, content, message, fresh_load):
    path = tmp_path / name
    if content in ("", "tokenizer.model", "tokenizer.json"):
        path.mkdir()
        if content:
            (path / content).write_text("{}")
    elif content is not None:
        path.write_text(content)
    line = one_error_line(prepro_llama3(path, "tinyshakespeare", "--builtin", "-o", str(tmp_path / "out")))
    assert message in line and str(path) in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("args, message", [
    (["tinyshakespeare", "--builtin", "-m", "llama-3"], "-m llama-3 needs --tokenizer PATH"),
    (["fineweb", "--model-desc", "llama-3"], "-m llama-3 needs --tokenizer PATH"),
    (["hellaswag", "-m", "llama-3", "--tokenizer", "tok"], "hellaswag: llm.c defines no llama-3 eval file"),
    (["mmlu", "-m", "llama-3"], "mmlu: llm.c defines no llama-3 eval file"),
    (["tinyshakespeare", "--builtin", "--tokenizer", "tok"], "--tokenizer applies only to -m llama-3"),
])
def test_refused_in_one_line(tmp_path, args, message):
    assert message in one_error_line(run_prepro(*args, "-o", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_llama3_tokenizer_decodes_what_it_encodes(tokenizer, fresh_load):
    """`llmc sample --tokenizer` and train's mid-run samples with a Llama 3 tokenizer: prompts are its tokens,
    generation starts after (and stops at) its BOS, and ids stream back to the text, characters whose UTF-8
    bytes span tokens whole."""
    from llmc.core.sample import load_decoder

    path, ref = tokenizer
    decoder = load_decoder(path)
    text = "the and thing — ünïcode ✓\n\nof " + SPECIAL_TEXT
    ids = decoder.encode(text)
    assert ids == list(ref.encode_ordinary(text)) and decoder.eot == ref.bos
    assert "".join(decoder(t) for t in ids) + decoder.flush() == text
    assert decoder(ref.bos) == "<|begin_of_text|>"
    assert decoder(10 ** 7) == f"<|{10 ** 7}|>"  # an id no tokenizer knows


def test_llmc_sample_with_a_llama3_tokenizer(tokenizer, fresh_load, tmp_path):
    """A Llama trained on llama-3 shards samples in its own tokens: the prompt after BOS, the text decoded."""
    from click.testing import CliRunner

    from llmc.cli.main import main
    from llmc.core import families
    from llmc.core.llama import KVCacheModel
    from llmc.core.rand import XorShift
    from llmc.core.sample import generate, load_decoder

    path, ref = tokenizer
    family, cfg, params = families.load(f"llama3:d1:c32:h2:kv1:t32:v{ref.bos + 2}:m16", seed=5)
    family.write_model(str(tmp_path / "llama.bin"), cfg, params * 20, "fp32")  # sharper than a fresh init
    result = CliRunner().invoke(main, ["sample", "-e", str(tmp_path / "llama.bin"), "--tokenizer", str(path),
                                       "--prompt", "the and", "-g", "8", "--no-stop-at-eot"])
    assert result.exit_code == 0, result.output
    context = [ref.bos, *ref.encode_ordinary("the and")]
    decoder = load_decoder(path)
    want = [decoder(t) for t in generate(KVCacheModel, cfg, params * 20, np, context, 8, XorShift(1337))]
    assert result.stdout == "the and" + "".join(want) + decoder.flush() + "\n"


def test_mid_run_samples_decode_with_the_shards_tokenizer(tokenizer, fresh_load, tmp_path):
    from click.testing import CliRunner

    from llmc.cli.main import main
    from llmc.core.formats import write_shard

    path, ref = tokenizer
    V = ref.bos + 2
    rng = np.random.default_rng(0)
    for split, n in (("train", 2000), ("val", 1000)):
        write_shard(tmp_path / f"{split}.bin", rng.integers(0, V, n), "llama-3")
    result = CliRunner().invoke(main, ["train-cpu", "-e", f"llama3:d1:c32:h2:kv1:t32:v{V}:m16", "-i",
                                       str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin"), "-b", "2",
                                       "-t", "16", "-x", "2", "-v", "0", "-s", "2", "-g", "6", "--tokenizer", str(path)])
    assert result.exit_code == 0, result.output
    assert "generating:\n---\n" in result.stdout and "no samples" not in result.stdout

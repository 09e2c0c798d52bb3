"""`llmc sample` and `llmc plot` through the command line."""

import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core.config import GPT2_VOCAB, GPTConfig, pad_vocab
from llmc.core.formats import write_model
from llmc.core.init import random_init

# GPT-2's vocab (so <|endoftext|> and the BPE exist), everything else tiny
CFG = GPTConfig(max_seq_len=24, vocab_size=GPT2_VOCAB, padded_vocab_size=pad_vocab(GPT2_VOCAB), num_layers=1,
                num_heads=2, channels=16)


def invoke(*argv):
    return CliRunner().invoke(main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "gpt2_tiny.bin"
    write_model(path, CFG, random_init(CFG) * 8)  # sharper than a fresh init
    return path


@pytest.mark.parametrize("name", ["sample", "plot"])
def test_help(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0 and "Example: llmc " + name in result.output


def test_sample_streams_reproducibly(model):
    first = invoke("sample", "-e", model, "--prompt", "Hello there", "-g", 10, "--seed", 42)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("Hello there") and len(first.stdout) > len("Hello there\n")
    assert " tok/s (KV cache, cpu)" in first.stderr
    again = invoke("sample", "-e", model, "--prompt", "Hello there", "-g", 10, "--seed", 42, "--no-kv-cache")
    assert again.stdout == first.stdout and "no KV cache" in again.stderr
    other = invoke("sample", "-e", model, "--prompt", "Hello there", "-g", 10, "--seed", 43)
    assert other.stdout != first.stdout
    greedy = invoke("sample", "-e", model, "-g", 40, "--temperature", 0, "--top-k", 5)
    assert greedy.exit_code == 0 and "stopped at the model's max_seq_len of 24" in greedy.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["--seed", 0], "--seed must be in 1 .. 2^64-1"),
    (["-g", 0], "-g takes >= 1"),
    (["--temperature", -1], "--temperature >= 0"),
    (["--prompt", "word " * 30], "max_seq_len is 24"),
    (["--tokenizer", "missing.bin"], "No such file"),
])
def test_sample_bad_input(model, argv, fragment):
    result = invoke("sample", "-e", model, *argv)
    assert result.exit_code == 1 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sample_bad_model(tmp_path):
    small = GPTConfig(max_seq_len=8, vocab_size=101, padded_vocab_size=128, num_layers=1, num_heads=1, channels=8)
    write_model(tmp_path / "small.bin", small, random_init(small))
    result = invoke("sample", "-e", tmp_path / "small.bin")
    assert result.exit_code == 1 and "has no <|endoftext|> (50256)" in result.stderr
    (tmp_path / "cut.bin").write_bytes((tmp_path / "small.bin").read_bytes()[:-3])
    result = invoke("sample", "-e", tmp_path / "cut.bin")
    assert result.exit_code == 1 and "truncated" in result.stderr


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    # a resumed run logs some steps twice; the later value wins
    (run / "main.log").write_text("s:0 tel:4.60\ns:0 trl:4.61 lr:0.1 norm:1.0\ns:1 trl:4.50 lr:0.1 norm:1.0\n"
                                  "s:1 trl:4.40 lr:0.1 norm:1.0\ns:2 tel:4.30\ns:2 eval:0.2600\n")
    other = tmp_path / "other.log"
    other.write_text("s:0 trl:5.0 lr:0.1 norm:1.0\ns:5 tel:4.0\n")
    result = invoke("plot", run, other, "-o", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from llmc.cli.commands.plot import read_log
    assert read_log(run / "main.log") == {"trl": {0: 4.61, 1: 4.40}, "tel": {0: 4.60, 2: 4.30}, "eval": {2: 0.26}}
    result = invoke("plot", tmp_path / "nothing")
    assert result.exit_code == 1 and "no main.log there" in result.stderr
    (tmp_path / "empty.log").write_text("hello\n")
    result = invoke("plot", tmp_path / "empty.log")
    assert result.exit_code == 1 and "no s:N trl:/tel:/eval: lines" in result.stderr


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    (tmp_path / "main.log").write_text("s:0 tel:4.6\n")
    result = invoke("plot", tmp_path)
    assert result.exit_code == 1 and "llmc plot needs matplotlib: pip install 'llmc[plot]'" in result.stderr

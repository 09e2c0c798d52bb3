"""`llmc sample` and `llmc plot` through the command line."""

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core.config import GPT2_EOT, GPT2_VOCAB, GPTConfig, pad_vocab, param_shapes
from llmc.core.formats import write_model, write_tokenizer
from llmc.core.init import random_init
from llmc.core.flat_model import views

# GPT-2's vocab (so <|endoftext|> and the BPE exist), everything else tiny
CFG = GPTConfig(max_seq_len=24, vocab_size=GPT2_VOCAB, padded_vocab_size=pad_vocab(GPT2_VOCAB), num_layers=1,
                num_heads=2, channels=16)
SMALL = GPTConfig(max_seq_len=8, vocab_size=101, padded_vocab_size=128, num_layers=1, num_heads=1, channels=8)


def invoke(*argv):
    return CliRunner().invoke(main, [str(a) for a in argv])


def one_line_error(result, fragment):
    """Exit 1 with one line on stderr holding fragment, and no traceback."""
    return (result.exit_code == 1 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
            and result.exc_info[0] is SystemExit)


def always_eot(cfg, eot):
    """Weights whose every next token is eot: the final layernorm outputs ones, and only wte[eot] is large."""
    params = random_init(cfg)
    p = views(params, param_shapes(cfg))
    p["lnfw"][:], p["lnfb"][:], p["wte"][eot] = 0, 1, 1  # eot's logit is C; the others ~N(0, 0.02^2 C)
    return params


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
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, not nan"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0, not inf"),
    (["--prompt", "word " * 30], "max_seq_len is 24"),
    (["--tokenizer", "missing.bin"], "missing.bin: no such tokenizer file or folder"),
])
def test_sample_bad_input(model, argv, fragment):
    assert one_line_error(invoke("sample", "-e", model, *argv), fragment)


def test_sample_bad_model(tmp_path):
    write_model(tmp_path / "small.bin", SMALL, random_init(SMALL))
    result = invoke("sample", "-e", tmp_path / "small.bin")
    assert result.exit_code == 1 and "has no <|endoftext|> (50256)" in result.stderr
    (tmp_path / "cut.bin").write_bytes((tmp_path / "small.bin").read_bytes()[:-3])
    result = invoke("sample", "-e", tmp_path / "cut.bin")
    assert result.exit_code == 1 and "truncated" in result.stderr


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sample_refuses_non_finite_weights(tmp_path, dtype):
    params = random_init(SMALL)
    params[[0, 500, -1]] = [np.nan, np.inf, -np.inf]
    write_model(tmp_path / "diverged.bin", SMALL, params, dtype)
    result = invoke("sample", "-e", tmp_path / "diverged.bin")
    assert one_line_error(result, f"{tmp_path / 'diverged.bin'}: 3 of its parameters are not finite (NaN or Inf)")
    assert result.stdout == ""


def test_sample_stops_at_eot(tmp_path):
    write_model(tmp_path / "eot.bin", CFG, always_eot(CFG, GPT2_EOT))
    stop = invoke("sample", "-e", tmp_path / "eot.bin", "--prompt", "Hi", "-g", 5, "--temperature", 0)
    assert stop.exit_code == 0, stop.output
    assert stop.stdout == "Hi\n" and "stopped at <|endoftext|>, token 1 of at most 5" in stop.stderr
    assert "max_seq_len" not in stop.stderr
    go_on = invoke("sample", "-e", tmp_path / "eot.bin", "--prompt", "Hi", "-g", 5, "--no-stop-at-eot")
    assert go_on.exit_code == 0, go_on.output
    assert go_on.stdout == "Hi" + "<|endoftext|>" * 5 + "\n" and "stopped" not in go_on.stderr
    assert go_on.stderr.startswith("5 tokens in ")
    # past max_seq_len, the note is about max_seq_len, not EOT
    go_on = invoke("sample", "-e", tmp_path / "eot.bin", "-g", 50, "--no-stop-at-eot")
    assert go_on.stdout == "<|endoftext|>" * 24 + "\n" and "stopped at the model's max_seq_len" in go_on.stderr
    assert "--no-stop-at-eot" in invoke("sample", "--help").output


def test_sample_with_tokenizer_file(tmp_path):
    """llm.c's gpt2_tokenizer.bin decodes; its end-of-text id must be inside its tokens and the model's vocab."""
    write_model(tmp_path / "small.bin", SMALL, always_eot(SMALL, 100))
    write_tokenizer(tmp_path / "tok.bin", [b"t%d" % i for i in range(100)] + [b"<eot>"], eot=100)
    run = ["sample", "-e", tmp_path / "small.bin", "--tokenizer", tmp_path / "tok.bin", "-g", 3]
    result = invoke(*run, "--no-stop-at-eot")
    assert result.exit_code == 0 and result.stdout == "<eot><eot><eot>\n", result.output
    result = invoke(*run)
    assert result.stdout == "\n" and "stopped at <|endoftext|>, token 1 of at most 3" in result.stderr

    write_tokenizer(tmp_path / "bad.bin", [b"a", b"b", b"c"], eot=5)
    result = invoke("sample", "-e", tmp_path / "small.bin", "--tokenizer", tmp_path / "bad.bin")
    assert one_line_error(result, f"{tmp_path / 'bad.bin'}: end-of-text id 5 is outside its 3 tokens")
    assert "small.bin" not in result.stderr  # the tokenizer is at fault, not the model

    write_tokenizer(tmp_path / "big.bin", [b"t%d" % i for i in range(200)], eot=150)
    result = invoke("sample", "-e", tmp_path / "small.bin", "--tokenizer", tmp_path / "big.bin")
    assert one_line_error(result, f"{tmp_path / 'big.bin'} does not fit {tmp_path / 'small.bin'}: its end-of-text "
                                  f"id 150 is outside the model's vocab of 101")


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

"""`llmc export-weights` through the command line: files written, round trips, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core.config import GPTConfig, num_parameters
from llmc.core.formats import read_debug_state, read_model, write_model, write_shard

pytest.importorskip("safetensors")
CFG = GPTConfig(max_seq_len=16, vocab_size=70, padded_vocab_size=128, num_layers=2, num_heads=2, channels=8)


def run(*args: str):
    return CliRunner().invoke(main, ["export-weights", *map(str, args)])


@pytest.fixture(scope="module")
def model_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("bin") / "model.bin"
    params = np.random.default_rng(0).standard_normal(num_parameters(CFG)).astype(np.float32) * 0.1
    params[CFG.vocab_size * CFG.channels: CFG.padded_vocab_size * CFG.channels] = 0  # padded wte rows
    write_model(path, CFG, params)
    return path


@pytest.fixture(scope="module")
def hf_dir(model_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    result = run("--to-hf", model_bin, out)
    assert result.exit_code == 0, result.output
    return out


def test_help():
    result = run("--help")
    assert result.exit_code == 0
    for text in ("--to-hf", "--debug-state", "model.safetensors", "gpt2_SIZE_bf16.bin", "config.json", "Examples"):
        assert text in result.output


def test_hf_to_llmc_and_back_is_byte_identical(model_bin, hf_dir, tmp_path):
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "model.safetensors"]
    result = run(hf_dir, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2_L2H2C8.bin", "gpt2_L2H2C8_bf16.bin", "gpt2_tokenizer.bin"]
    assert (tmp_path / "gpt2_L2H2C8.bin").read_bytes() == model_bin.read_bytes()
    cfg, bf16 = read_model(tmp_path / "gpt2_L2H2C8_bf16.bin")
    assert cfg == CFG and np.abs(bf16 - read_model(model_bin)[1]).max() < 2e-3


def test_debug_state(hf_dir, tmp_path):
    pytest.importorskip("torch")
    write_shard(tmp_path / "val.bin", np.arange(40) % CFG.vocab_size)
    result = run(hf_dir, "-o", tmp_path / "out", "--debug-state", "--input", tmp_path / "val.bin",
                 "-b", 2, "-t", 8, "--steps", 3)
    assert result.exit_code == 0, result.output
    state = read_debug_state(tmp_path / "out" / "gpt2_L2H2C8_debug_state.bin", CFG)
    assert state.inputs.shape == (2, 8) and state.inputs.ravel().tolist() == list(range(16))
    assert len(state.ref_losses) == 3 and state.ref_losses[0] == np.float32(state.loss)


def test_debug_state_without_torch_is_skipped(hf_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmc.core.torch_gpt2", None)  # import fails as without torch
    write_shard(tmp_path / "val.bin", np.arange(40) % CFG.vocab_size)
    result = run(hf_dir, "-o", tmp_path / "out", "--debug-state", "--input", tmp_path / "val.bin", "-b", 1, "-t", 8)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "PyTorch" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpt2_L2H2C8.bin", "gpt2_L2H2C8_bf16.bin",
                                                                   "gpt2_tokenizer.bin"]


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error:") and all(w in result.output for w in words), result.output


def test_truncated_or_wrong_shape_safetensors(hf_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:-64])
    one_line_error(run(bad, "-o", tmp_path / "out"), "model.safetensors")
    assert not (tmp_path / "out").exists()  # nothing written
    # a config that disagrees with the tensors: every tensor has the wrong shape for it
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    (bad / "config.json").write_text((hf_dir / "config.json").read_text().replace('"n_embd": 8', '"n_embd": 12'))
    one_line_error(run(bad, "-o", tmp_path / "out"), "shape")


def test_usage_errors(model_bin, hf_dir, tmp_path, monkeypatch):
    assert run("--to-hf", model_bin).exit_code != 0
    one_line_error(run(hf_dir, "--input", model_bin), "--debug-state")
    one_line_error(run(model_bin), "--to-hf")
    one_line_error(run("not-a-model"), "not-a-model")
    monkeypatch.chdir(tmp_path)  # no data/tinyshakespeare here
    one_line_error(run(hf_dir, "--debug-state"), "llmc prepro tinyshakespeare")
    assert not list(tmp_path.iterdir())
    (tmp_path / "junk.bin").write_bytes(b"\0" * 2000)
    one_line_error(run("--to-hf", tmp_path / "junk.bin", tmp_path / "o"), "magic")


def test_hub_repo_offline_fails_cleanly(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-c", "from llmc.cli.main import main; main()", "export-weights", "nobody/no-such-gpt2", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: cannot fetch config.json of nobody/no-such-gpt2")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()

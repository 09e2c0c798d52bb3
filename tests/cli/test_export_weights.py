"""`llmc export-weights` through the command line: files written, round trips, one-line errors,
hub names from the local cache or a quick failure offline."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core.config import GPTConfig, num_parameters
from llmc.core.formats import read_debug_state, read_model, write_model, write_shard

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


def test_hf_files_get_a_normal_files_mode(model_bin, hf_dir, tmp_path):
    old = os.umask(0o022)
    try:
        result = run("--to-hf", model_bin, tmp_path / "a")
        os.umask(0o027)
        assert run("--to-hf", model_bin, tmp_path / "b").exit_code == 0
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        assert (tmp_path / "b" / name).stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "a" / name).read_bytes() == (hf_dir / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.safetensors"]  # no temp files


# ----------------------------------------------------------------------------- hub names

def hub_env(tmp_path, **env: str) -> dict[str, str]:
    """The environment with an empty HF_HOME and no proxies or other HF settings, plus env."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE_")) and "proxy" not in k.lower()}
    return base | {"HF_HOME": str(tmp_path / "hf_home")} | env


def run_module(tmp_path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m llmc export-weights ARGS` in a fresh process, as huggingface_hub reads env at import;
    returns it and its wall time."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "llmc", "export-weights", *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, time.monotonic() - start


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused
        yield s.getsockname()[1]


def cache_repo(hub_cache, repo: str, files: dict[str, bytes]) -> None:
    """repo at main in a huggingface_hub cache, laid out as hf_hub_download leaves it."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    for name, data in files.items():
        (root / "snapshots" / commit / name).write_bytes(data)


def assert_one_line_hint(proc: subprocess.CompletedProcess, seconds: float) -> None:
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error:"), proc.stderr
    assert "local Hugging Face folder with config.json and model.safetensors" in proc.stderr, proc.stderr
    assert "cached" not in proc.stdout and "fetching" not in proc.stdout, proc.stdout
    assert seconds < 5, f"took {seconds:.1f} s"


@pytest.mark.parametrize("name", ["gpt2", "nobody/no-such-gpt2"])
def test_hub_name_offline_fails_at_once(tmp_path, name):
    proc, seconds = run_module(tmp_path, hub_env(tmp_path, HF_HUB_OFFLINE="1"), name, "-o", tmp_path / "out")
    assert_one_line_hint(proc, seconds)
    assert "HF_HUB_OFFLINE" in proc.stderr and not (tmp_path / "out").exists()


def test_unreachable_hub_fails_within_seconds(tmp_path, closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    proc, seconds = run_module(tmp_path, hub_env(tmp_path, HF_ENDPOINT=endpoint), "gpt2", "-o", tmp_path / "out")
    assert_one_line_hint(proc, seconds)
    assert f"{endpoint} cannot be reached" in proc.stderr and not (tmp_path / "out").exists()


def test_hub_repo_in_the_local_cache_needs_no_network(model_bin, hf_dir, tmp_path, closed_port):
    env = hub_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    cache_repo(tmp_path / "hf_home" / "hub", "nobody/tiny-gpt2",
               {n: (hf_dir / n).read_bytes() for n in ("config.json", "model.safetensors")})
    proc, _ = run_module(tmp_path, env, "nobody/tiny-gpt2", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("reading nobody/tiny-gpt2 (from the local cache)\n"), proc.stdout
    assert (tmp_path / "out" / "gpt2_L2H2C8.bin").read_bytes() == model_bin.read_bytes()


def sharded(hf_dir) -> dict[str, bytes]:
    """hf_dir's checkpoint as config.json, model.safetensors.index.json and two shards."""
    from safetensors.numpy import load_file, save

    tensors = load_file(hf_dir / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    index = {"metadata": {}, "weight_map": {n: shard for shard, ns in shards.items() for n in ns}}
    return {"config.json": (hf_dir / "config.json").read_bytes(),
            "model.safetensors.index.json": json.dumps(index).encode(),
            **{shard: save({n: tensors[n] for n in ns}) for shard, ns in shards.items()}}


def test_sharded_checkpoint_from_the_cache(model_bin, hf_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache_repo(tmp_path / "hub", "nobody/tiny-gpt2", sharded(hf_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("llmc.core.hub._reachable", lambda url: pytest.fail("a cache hit touched the network"))
    result = run("nobody/tiny-gpt2", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "(from the local cache)" in result.output
    assert (tmp_path / "out" / "gpt2_L2H2C8.bin").read_bytes() == model_bin.read_bytes()


def fake_hub(monkeypatch, remote: dict[str, bytes], cache) -> list[tuple[str, bool]]:
    """hf_hub_download serving `remote` into `cache`; returns the log of (filename, local_files_only) calls."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    calls = []

    def download(repo_id: str, filename: str, local_files_only: bool = False) -> str:
        calls.append((filename, local_files_only))
        if not (cache / filename).exists():
            if local_files_only:
                raise LocalEntryNotFoundError(f"{filename} is not cached")
            if filename not in remote:
                raise EntryNotFoundError(f"404: {filename}")
            cache.mkdir(exist_ok=True)
            (cache / filename).write_bytes(remote[filename])
        return str(cache / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_download_only_after_a_cache_miss_and_a_reachable_hub(model_bin, hf_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    remote = sharded(hf_dir)
    calls = fake_hub(monkeypatch, remote, tmp_path / "cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example")
    probes = []
    monkeypatch.setattr("llmc.core.hub._reachable", lambda url: probes.append(url) or True)
    result = run("nobody/tiny-gpt2", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("downloading nobody/tiny-gpt2 from the Hugging Face hub\n"), result.output
    assert probes == ["https://hub.example"]
    assert calls[:2] == [("config.json", True), ("config.json", False)]  # the cache first
    downloads = [f for f, local in calls if not local]
    assert downloads == ["config.json", "model.safetensors", "model.safetensors.index.json",
                         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert (tmp_path / "out" / "gpt2_L2H2C8.bin").read_bytes() == model_bin.read_bytes()
    # now all cached: read without a probe, even offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "(from the local cache)" in run("nobody/tiny-gpt2", "-o", tmp_path / "again").output
    assert (tmp_path / "again" / "gpt2_L2H2C8.bin").read_bytes() == model_bin.read_bytes() and len(probes) == 1


def test_partly_cached_repo_offline_or_unreachable(hf_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_bytes((hf_dir / "config.json").read_bytes())  # the weights never arrived
    fake_hub(monkeypatch, {}, cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    one_line_error(run("gpt2", "-o", tmp_path / "out"), "openai-community/gpt2", "HF_HUB_OFFLINE",
                   "local Hugging Face folder")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("llmc.core.hub._reachable", lambda url: False)
    one_line_error(run("gpt2", "-o", tmp_path / "out"), "cannot be reached", "local Hugging Face folder")
    monkeypatch.setattr("llmc.core.hub._reachable", lambda url: True)
    result = run("gpt2", "-o", tmp_path / "out")
    assert result.exit_code == 1 and result.output.splitlines()[-1] == (
        "Error: openai-community/gpt2 has no model.safetensors (llmc reads safetensors only, not pytorch_model.bin)")
    assert not (tmp_path / "out").exists()

"""core/families.py: the loop, checkpoints and sampling know a model only through its Family."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from llmc.core import checkpoint, cpu, families
from llmc.core.errors import LlmcError
from llmc.core.formats import read_model, write_model, write_tokenizer
from llmc.core.init import random_init
from llmc.core.model import GPT, KVCacheModel
from llmc.core.train import Trainer
from llmc.core.train_config import TrainConfig
from llmc.tests.core.training_data import CFG, write_training_data

ROOT = Path(__file__).resolve().parents[2]
# the family-independent code: what it may import of GPT-2 is nothing
GENERIC = ("core/train.py", "core/train_config.py", "core/checkpoint.py", "core/sample.py", "core/evaluate.py", "core/rundir.py",
           "core/metrics.py", "core/report.py", "cli/flags.py", "cli/commands/sample.py")
GPT2_MODULES = ("llmc.core.model", "llmc.core.config", "llmc.core.init", "llmc.core.torch_gpt2",
                "llmc.core.hf_weights", "llmc.core.export", "llmc.core.hub")
GPT2_NAMES = {"write_model", "read_model", "read_model_config", "model_header", "MODEL_MAGIC"}  # of core.formats


@pytest.mark.parametrize("path", GENERIC)
def test_generic_code_imports_nothing_of_gpt2(path):
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module not in GPT2_MODULES, f"{path}:{node.lineno} imports {node.module}"
            if node.module == "llmc.core.formats":
                assert not GPT2_NAMES & {a.name for a in node.names}, f"{path}:{node.lineno}"
        if isinstance(node, ast.Import):
            assert not {a.name for a in node.names} & set(GPT2_MODULES), f"{path}:{node.lineno}"


def test_load_finds_the_family_by_magic_or_descriptor(tmp_path):
    family, cfg, params = families.load("d2:c32:h2:t16:v100")
    assert family.name == "gpt2" and (cfg.num_layers, cfg.channels, cfg.vocab_size) == (2, 32, 100)
    np.testing.assert_array_equal(params, random_init(cfg))
    write_model(tmp_path / "m.bin", cfg, params)
    family, cfg2, params2 = families.load(str(tmp_path / "m.bin"))
    assert family.name == "gpt2" and cfg2 == cfg and np.array_equal(params2, params)
    raw = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "bad.bin").write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(LlmcError, match=r"bad.bin: bad magic 67305985 \(expected 20240326 or 20240803\)"):
        families.load(str(tmp_path / "bad.bin"))
    with pytest.raises(LlmcError, match="unsupported model descriptor 'x12'.*unsupported Llama 3 descriptor 'x12'"):
        families.load("x12")


def test_load_finds_llama_3_by_magic_or_descriptor(tmp_path):
    from llmc.core import llama, llama_config, llama_formats

    family, cfg, params = families.load("llama3:d2:c32:h4:kv2:t16:v100:m16")
    assert family.name == "llama3" and family.model_magic == llama_formats.LLAMA3_MAGIC == 20240803
    assert (cfg.num_layers, cfg.channels, cfg.num_kv_heads, cfg.vocab_size) == (2, 32, 2, 100)
    assert family.Model is llama.Llama and family.KVCacheModel is llama.KVCacheModel
    np.testing.assert_array_equal(params, llama_config.random_init(cfg))
    family.write_model(tmp_path / "m.bin", cfg, params, "fp32")
    family, cfg2, params2 = families.load(str(tmp_path / "m.bin"))
    assert family.name == "llama3" and cfg2 == cfg and np.array_equal(params2, params)


# ----------------------------------------------------------------------------- a second family

CLONE_MAGIC = 31415926


def clone_family(calls: list[str]) -> families.Family:
    """GPT-2's math under another name and file magic, counting what the loop asks of it."""
    def write(path, cfg, params, dtype="fp32"):
        calls.append("write_model")
        write_model(path, cfg, params, dtype)
        with open(path, "r+b") as f:  # the same layout under the clone's magic
            f.write(np.int32(CLONE_MAGIC).tobytes())

    def read(path):
        calls.append("read_model")
        raw = Path(path).read_bytes()
        assert np.frombuffer(raw[:4], "<i4")[0] == CLONE_MAGIC
        gpt2 = Path(path).with_suffix(".gpt2")
        gpt2.write_bytes(np.int32(20240326).tobytes() + raw[4:])
        return read_model(gpt2)

    class Model(GPT):
        def __init__(self, *args, **kwargs):
            calls.append("Model")
            super().__init__(*args, **kwargs)

    class Inference(KVCacheModel):
        def __init__(self, *args, **kwargs):
            calls.append("KVCacheModel")
            super().__init__(*args, **kwargs)

    gpt2 = families.gpt2()
    return dataclasses.replace(gpt2, name="clone", model_magic=CLONE_MAGIC, read_model=read, write_model=write,
                               Model=Model, KVCacheModel=Inference,
                               describe=lambda cfg: [("clone of", "GPT-2"), *gpt2.describe(cfg)])


def test_the_loop_trains_checkpoints_resumes_and_samples_through_the_family(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    data = write_training_data(tmp_path / "data")
    calls: list[str] = []
    family = clone_family(calls)
    monkeypatch.setattr(families, "FAMILIES", {"gpt2": families.gpt2, "clone": lambda: family})
    init = tmp_path / "clone.bin"
    family.write_model(init, CFG, random_init(CFG))
    assert Path(init).read_bytes()[:4] == np.int32(CLONE_MAGIC).tobytes()
    cfg = TrainConfig(train_data=str(data / "train_*.bin"), val_data=str(data / "val.bin"), model=str(init),
                      output_dir=str(tmp_path / "out"), B=4, T=16, max_steps=4, val_every=2, val_max_steps=1,
                      checkpoint_every=2, sample_every=0, lr=1e-3)
    lines: list[str] = []
    trainer = Trainer(cfg, cpu, out=lines.append)
    trainer.describe()
    trainer.run()
    assert "| clone of              | GPT-2                                              |" in lines
    # the checkpoint is the family's file, and -y 1 reads it back through the family
    assert checkpoint.model_path(cfg.output_dir, 4).read_bytes()[:4] == np.int32(CLONE_MAGIC).tobytes()
    calls.clear()
    monkeypatch.chdir(tmp_path)  # llm.c's tokenizer file in the cwd: its EOT fits this small vocab, so samples run
    write_tokenizer("gpt2_tokenizer.bin", [bytes([65 + i % 26]) for i in range(CFG.vocab_size)], CFG.vocab_size - 1)
    resumed = Trainer(dataclasses.replace(cfg, max_steps=6, resume=1, sample_every=6), cpu, out=lines.append,
                      stream=lambda text: None)
    resumed.run()
    assert "generating:\n---" in lines
    assert calls[:2] == ["read_model", "Model"] and "write_model" in calls and "KVCacheModel" in calls
    # the same numbers as GPT-2 itself: the family changed names and files, not the math
    gpt2_init = tmp_path / "gpt2.bin"
    write_model(gpt2_init, CFG, random_init(CFG))
    plain = Trainer(dataclasses.replace(cfg, model=str(gpt2_init), output_dir=str(tmp_path / "plain"), max_steps=6),
                    cpu, out=lambda line: None)
    plain.run()
    np.testing.assert_array_equal(resumed.model.params, plain.model.params)

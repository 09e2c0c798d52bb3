"""`llmc test -f8 1`: the FP8 linear layers against a PyTorch reference state within core/check.py's
tolerances derived from E4M3's and E5M2's rounding; one gradient element perturbed past them fails."""

import re

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core import formats
from llmc.core.config import GPTConfig, param_shapes
from llmc.core.flat_model import views

# a model whose linear layers FP8 takes (dimensions multiples of 16)
CFG = GPTConfig(max_seq_len=64, vocab_size=101, padded_vocab_size=128, num_layers=4, num_heads=4, channels=128)
STEP = re.compile(r"^step (\d+): loss \S+ \(took \S+ ms\) OK = ([01])$")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(model path, state path) of a PyTorch reference: a random model and its debug state, 10 steps."""
    pytest.importorskip("torch")
    from llmc.core.torch_gpt2 import write_reference

    return write_reference(tmp_path_factory.mktemp("fp8_check"), CFG, B=4, T=32, steps=10, seed=1)


def llmc_test(model, state, device: str = "cpu") -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["test", "-m", str(model), "-s", str(state), "--device", device, "-f8", "1"],
                                prog_name="llmc")
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.splitlines()


def perturbed(reference, tmp_path, tensor: str, device: str = "cpu") -> tuple[int, list[str]]:
    """llmc test on the reference with one element of `tensor`'s gradient moved by the tensor's largest
    element: past FP8's tolerance of a fraction of it."""
    model, state_path = reference
    state = formats.read_debug_state(state_path, CFG)
    grad = views(state.grads, param_shapes(CFG))[tensor].reshape(-1)
    grad[7] += np.abs(grad).max()
    formats.write_debug_state(tmp_path / "bad.bin", state)
    return llmc_test(model, tmp_path / "bad.bin", device)


def test_fp8_passes_within_its_derived_tolerances(reference):
    code, lines = llmc_test(*reference)
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert any(line.startswith("FP8 tolerances: logits") for line in lines)
    assert sum(line.startswith("OK d") for line in lines) == len(param_shapes(CFG))
    assert [m[2] for m in map(STEP.match, lines) if m] == ["1"] * 10


@pytest.mark.parametrize("tensor", ["qkvw", "fcb", "wte"])
def test_fp8_fails_on_one_perturbed_gradient(reference, tmp_path, tensor):
    code, lines = perturbed(reference, tmp_path, tensor)
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == [f"d{tensor}"]

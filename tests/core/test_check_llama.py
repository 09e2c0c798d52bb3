"""`llmc test` on Llama 3 (core/check.py): a debug state in train_llama3.py's format (write_state, then
write_training_history's ten losses and grad norms) from Hugging Face's LlamaForCausalLM in fp32 with
llm.c's weights, trained as train_llama3.py trains (AdamW lr 1e-5, betas 0.9/0.95, no decay, clipped to
norm 1), passes on the CPU; one wrong gradient element, history loss or history norm fails it.
"""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from llmc.cli.main import main  # noqa: E402
from llmc.core.flat_model import views  # noqa: E402
from llmc.core.llama_config import param_shapes  # noqa: E402
from llmc.core.llama_formats import LlamaDebugState, read_debug_state, write_debug_state, write_model  # noqa: E402
from llmc.tests.core.test_llama import hf_grads, hf_loss, hf_model, llama, random_params  # noqa: E402
from llmc.tests.core.test_model import random_batch  # noqa: E402

CFG = llama(2, 4, 2, 64, 101, 16)
B, T, STEPS = 2, 8, 10
BIASES = ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb")
STEP = re.compile(r"^step (\d+): loss \d+\.\d{6} norm \d+\.\d{6} \(took \d+\.\d{6} ms\) OK = ([01])$")


def reference_state(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> LlamaDebugState:
    """write_state's step 0, then train_llama3.py's loop on the one batch for the history."""
    model = hf_model(CFG, params, tied=False).float()
    logits, loss = hf_loss(model, x, y)
    loss.backward()
    state = LlamaDebugState(x, y, logits.detach().numpy(), loss.item(), hf_grads(model, CFG, tied=False).astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        _, loss = hf_loss(model, x, y)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        opt.step()
        losses.append(loss.item())
    state.ref_losses, state.ref_norms = np.array(losses, np.float32), np.array(norms, np.float32)
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(model path, state path): llm.c's model file (zero bias slots) and its debug state."""
    params = random_params(CFG, seed=3)
    p = views(params, param_shapes(CFG))
    for name in BIASES:
        p[name][...] = 0
    x, y = random_batch(CFG, B, T, np.random.default_rng(5))
    root = tmp_path_factory.mktemp("llama_check")
    write_model(root / "llama.bin", CFG, params)
    write_debug_state(root / "state.bin", reference_state(params, x, y))
    return root / "llama.bin", root / "state.bin"


def llmc_test(model, state, device: str = "cpu") -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["test", "-e", str(model), "-s", str(state), "--device", device], prog_name="llmc")
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.splitlines()


def perturbed(reference, tmp_path, change, device: str = "cpu") -> tuple[int, list[str]]:
    model, state_path = reference
    state = read_debug_state(state_path, CFG)
    change(state)
    write_debug_state(tmp_path / "bad.bin", state)
    return llmc_test(model, tmp_path / "bad.bin", device)


def test_llmc_test_passes_on_a_transformers_reference(reference):
    code, lines = llmc_test(*reference)
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert lines[0].startswith("[llama3] ")
    assert lines[1].startswith("OK (LOGITS)") and any(line.startswith("OK (LOSS)") for line in lines)
    assert [line.split()[1] for line in lines if line.startswith("OK d")] == [f"d{n}" for n in param_shapes(CFG)]
    steps = [m for m in map(STEP.match, lines) if m]
    assert [int(m[1]) for m in steps] == list(range(STEPS)) and all(m[2] == "1" for m in steps)
    assert "step losses checked against the state's training history (losses, norms)" in lines


@pytest.mark.parametrize("tensor", ["qkvw", "attprojb"])  # a weight, and a bias slot Llama leaves zero
def test_llmc_test_fails_on_one_perturbed_gradient(reference, tmp_path, tensor):
    def change(state):
        views(state.grads, param_shapes(CFG))[tensor].reshape(-1)[7] += 0.1

    code, lines = perturbed(reference, tmp_path, change)
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == [f"d{tensor}"]


@pytest.mark.parametrize("history", ["ref_losses", "ref_norms"])
def test_llmc_test_fails_on_one_perturbed_history_step(reference, tmp_path, history):
    def change(state):
        getattr(state, history)[6] *= 1.01

    code, lines = perturbed(reference, tmp_path, change)
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [m[2] for m in map(STEP.match, lines) if m] == ["1"] * 6 + ["0"] + ["1"] * 3
    assert any(line.startswith(("LOSS MISMATCH AT STEP 6", "NORM MISMATCH AT STEP 6")) for line in lines)


def test_llmc_test_without_history_checks_step_zero(reference, tmp_path):
    def change(state):
        state.ref_losses = state.ref_norms = None

    code, lines = perturbed(reference, tmp_path, change)
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert any("only step 0" in line for line in lines)

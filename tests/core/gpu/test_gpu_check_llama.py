"""`llmc test --device gpu` on Llama 3 with test_llama3.cu's bf16 thresholds: tests/core/test_check_llama.py's
transformers reference passes; one perturbed gradient element fails it."""

import pytest

pytest.importorskip("cupy")
pytest.importorskip("transformers")
from llmc.tests.core.gpu.util import gpu  # noqa: E402,F401  (skips without a GPU)

from llmc.core.flat_model import views  # noqa: E402
from llmc.core.llama_config import param_shapes  # noqa: E402
from llmc.tests.core.test_check_llama import CFG, STEP, STEPS, llmc_test, perturbed, reference  # noqa: E402,F401

pytestmark = pytest.mark.gpu


def test_llmc_test_gpu_passes_on_a_transformers_reference(reference):  # noqa: F811
    code, lines = llmc_test(*reference, device="gpu")
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert [m[2] for m in map(STEP.match, lines) if m] == ["1"] * STEPS


def test_llmc_test_gpu_fails_on_one_perturbed_gradient(reference, tmp_path):  # noqa: F811
    def change(state):
        views(state.grads, param_shapes(CFG))["qkvw"].reshape(-1)[7] += 1.0  # past its 1e-1 + 7.9%

    code, lines = perturbed(reference, tmp_path, change, device="gpu")
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == ["dqkvw"]

"""`llmc test --device gpu -f8 1`: the GPU's FP8 layers against tests/core/test_check_fp8.py's PyTorch
reference, within the same derived tolerances; one perturbed gradient element fails it."""

import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import gpu  # noqa: E402,F401  (skips without a GPU)

from llmc.tests.core.test_check_fp8 import STEP, llmc_test, perturbed, reference  # noqa: E402,F401

pytestmark = pytest.mark.gpu


def test_llmc_test_gpu_fp8_passes(reference):  # noqa: F811
    code, lines = llmc_test(*reference, device="gpu")
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert [m[2] for m in map(STEP.match, lines) if m] == ["1"] * 10


def test_llmc_test_gpu_fp8_fails_on_one_perturbed_gradient(reference, tmp_path):  # noqa: F811
    code, lines = perturbed(reference, tmp_path, "qkvw", device="gpu")
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == ["dqkvw"]

import pytest

from llmc.core.mfu import promised_bf16_flops


@pytest.mark.parametrize("device,flops", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                          ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                          ("NVIDIA GeForce GTX 1080", -1.0)])
def test_promised_bf16_flops_by_device_name(device, flops):
    assert promised_bf16_flops(device) == flops  # the PCIe H100 is not taken for the SXM part

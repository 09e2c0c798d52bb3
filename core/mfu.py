"""The denominator of llm.c's MFU (llmc/mfu.h): the dense bf16 tensor-core FLOP/s a GPU promises.
No CuPy here, so benchmarks can look a device up without opening a CUDA context."""

# by device name, first match wins: llm.c's H100 PCIe figure (756 TFLOP/s), scaled by tensor cores and clock
# for the SXM part as llm.c does
PROMISED_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                 ("A100", 312e12))


def promised_bf16_flops(device_name: str) -> float:
    """The device's dense bf16 FLOP/s, -1 when unknown (llm.c then prints -100% MFU)."""
    return next((flops for key, flops in PROMISED_BF16 if key in device_name), -1.0)

"""Every CUDA kernel compiles, at every pack width it is built for, with the options the GPU backend gives
NVRTC: on any machine, GPU or not, where NVRTC's pip wheels are installed (the dev extra's nvidia-cuda-nvrtc,
nvidia-cuda-runtime for the headers). A kernel edited on a machine without a GPU is compiled here first."""

import ctypes
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# by its path: the package llmc.core.gpu imports CuPy, which a machine without a GPU may lack
_spec = importlib.util.spec_from_file_location("llmc_gpu_sources", ROOT / "core" / "gpu" / "sources.py")
sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sources)


def _nvrtc() -> tuple[ctypes.CDLL, Path]:
    """NVRTC's library and the CUDA headers, from the nvidia-* wheels (CUDA 13's layout, then CUDA 12's)."""
    nvidia = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (nvidia.submodule_search_locations if nvidia else [])]
    for root in roots:
        for lib, include in (("cu13/lib/libnvrtc.so.13", "cu13/include"),
                             ("cuda_nvrtc/lib/libnvrtc.so.12", "cuda_runtime/include")):
            if (root / lib).is_file() and (root / include / "cuda_bf16.h").is_file():
                return ctypes.CDLL(str(root / lib)), root / include
    pytest.skip("NVRTC's pip wheels are not installed (pip install -e '.[dev]')")


KERNELS = sorted(p.stem for p in sources.KERNELS.glob("*.cu"))


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_at_every_pack_width(name):
    nvrtc, include = _nvrtc()
    text = sources.source(name)
    packs = (8,) if re.search(r"static_assert\(PACK == 8", text) else (8, 4, 2, 1)
    for pack in packs:
        program = ctypes.c_void_p()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), text.encode(), f"{name}.cu".encode(), 0, None, None) == 0
        opts = [o.encode() for o in (*sources.options(pack), "--gpu-architecture=compute_90", f"-I{include}")]
        result = nvrtc.nvrtcCompileProgram(program, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
        assert result == 0, f"{name}.cu at pack {pack}:\n{log.value.decode()}"

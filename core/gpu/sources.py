"""llmc's CUDA kernels as NVRTC compiles them: kernels/<name>.cu with its local `#include "x.cuh"` inlined,
and the compile options. Nothing here needs CuPy or a GPU, so the kernels also compile on a machine without
one (tests/core/gpu/test_sources.py, with NVRTC's pip wheel)."""

import re
from pathlib import Path

KERNELS = Path(__file__).parent / "kernels"


def source(name: str) -> str:
    """kernels/<name>.cu's text with its local headers inlined (CuPy's compile cache keys on the source text,
    so an edited header must change it) and `#line` markers keeping error positions."""
    return _inlined(KERNELS / f"{name}.cu")


def _inlined(path: Path) -> str:
    out = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.match(r'\s*#include\s+"([^"]+)"', line)
        if match:
            out.append(_inlined(KERNELS / match.group(1)))
            out.append(f'#line {number + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out)


def options(pack: int) -> tuple[str, ...]:
    """NVRTC's options for a kernel file built for packs of `pack` bf16 (common.cuh's PACK). -default-device:
    functions without an execution space (the row helpers' lambdas) are device functions, as NVRTC 13 takes
    them anyway and NVRTC 12 (CUDA 12's CuPy) only with it."""
    return ("-std=c++17", "-default-device", f"-DPACK={pack}")

"""cuDNN through nvidia-cudnn-frontend, for attention (SDPA) and the MLP's GELU GEMM: imported at its
first use, not with the backend, and one handle on the backend's stream, where every cuDNN graph of
llmc runs."""

import functools
import sys

from llmc.core.gpu import runtime


@functools.cache
def module():
    """nvidia-cudnn-frontend's `cudnn`, or None where it or its libcudnn is missing. Its import also
    imports torch when installed (about 5 s of train-gpu's start-up in a cProfile on the device machine),
    for torch tensors llmc never passes: the first try hides torch (unless something loaded it already),
    a second try imports as usual."""
    tries = (True, False) if "torch" not in sys.modules else (False,)
    for hide_torch in tries:
        if hide_torch:
            sys.modules["torch"] = None  # `import torch` then raises ImportError, which cudnn tolerates
        try:
            import cudnn
            return cudnn
        except (ImportError, OSError):
            continue
        finally:
            if hide_torch:
                del sys.modules["torch"]
    return None


@functools.cache
def handle():
    """The one cuDNN handle, on the backend's stream."""
    lib = module()
    h = lib.create_handle()
    lib.set_stream(handle=h, stream=runtime.current().stream.ptr)
    return h

"""C += A.T @ B through the BLAS that NumPy itself links (OpenBLAS's cblas_sgemm with beta = 1).

Weight gradients accumulate (`+=`); NumPy's matmul can only overwrite, which costs a temporary and
an extra pass over every weight per step. When that library or symbol can't be found (another
NumPy build), accumulate_at_b falls back to NumPy.
"""

import ctypes
import functools
import glob
import os

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


@functools.cache
def _sgemm():
    """NumPy's own OpenBLAS cblas_sgemm, loaded at the first matmul (None where there is none)."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol, blasint in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                                ("scipy_cblas_sgemm", ctypes.c_int), ("cblas_sgemm", ctypes.c_int)):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                ptr = ctypes.c_void_p
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, blasint, blasint, blasint, ctypes.c_float,
                               ptr, blasint, ptr, blasint, ctypes.c_float, ptr, blasint]
                fn.restype = None
                return fn
    return None



def _rowmajor(x: np.ndarray) -> bool:
    return x.dtype == np.float32 and x.ndim == 2 and x.strides[1] == 4 and x.strides[0] == 4 * x.shape[1]


def accumulate_at_b(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c (M, N) += a.T @ b, with a (K, M) and b (K, N) row-major fp32."""
    sgemm = _sgemm()
    if sgemm is not None and _rowmajor(a) and _rowmajor(b) and _rowmajor(c):
        K, M = a.shape
        N = b.shape[1]
        sgemm(ROW_MAJOR, TRANS, NO_TRANS, M, N, K, 1.0, a.ctypes.data, M, b.ctypes.data, N, 1.0, c.ctypes.data, N)
    else:
        c += a.T @ b

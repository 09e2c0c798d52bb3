"""Row-major GEMMs through raw cuBLASLt (nvmath-python's bindings): bf16 operands, fp32 accumulate,
bf16 or fp32 output, optional bias/GELU/dGELU epilogues, strided batches. CuPy's own cuBLAS refuses
CUDA-graph capture; these calls are captured like any kernel. A plan (descriptors, layouts and the
algorithm, the fastest of the heuristic's top candidates timed on first use) is built once per
shape and cached; pointers are set per call.

cuBLASLt is column-major: a row-major (r, c) matrix with leading dimension ld is its column-major
(c, r) transpose, so D = op(A) @ op(B) is computed as D^T = op(B)^T @ op(A)^T.
"""

import functools
from dataclasses import dataclass

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.gpu.runtime import scratch, stream

try:
    from nvmath.bindings import cublasLt as lt
except ImportError as e:
    raise LlmcError("nvmath-python is not installed: pip install 'llmc[gpu]' (it provides cuBLASLt)") from e

CUDA_R_32F, CUDA_R_16BF, COMPUTE_32F = 0, 14, 68
OP_N, OP_T = 0, 1
WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper
CANDIDATES = 32  # heuristic's algorithms timed per shape
TUNE_RUNS = 3
TUNE_MIN_FLOP = 2e9  # smaller products take the heuristic's first choice untimed
_RESULT_BYTES = lt.matmul_heuristic_result_dtype.itemsize
Epilogue = lt.Epilogue

_handle = lt.create()


def _set(setter, obj, attr, value) -> None:
    getter = {lt.matmul_desc_set_attribute: lt.get_matmul_desc_attribute_dtype,
              lt.matrix_layout_set_attribute: lt.get_matrix_layout_attribute_dtype,
              lt.matmul_preference_set_attribute: lt.get_matmul_preference_attribute_dtype}[setter]
    buf = np.array([value], dtype=getter(attr))
    setter(obj, attr, buf.ctypes.data, buf.nbytes)


def _alignment(address: int) -> int:
    """Largest power of two (up to 256) dividing a pointer: what the heuristic may assume."""
    return min(256, address & -address) if address else 256


@dataclass(frozen=True)
class _Key:
    M: int
    N: int
    K: int
    trans_a: bool
    trans_b: bool
    lda: int
    ldb: int
    ldd: int
    out_f32: bool
    epilogue: int
    aux_ld: int
    batch: int
    stride_a: int
    stride_b: int
    stride_d: int
    align: tuple  # pointer alignments of A, B, D (and bias/aux folded into D's)


class _Plan:
    """Descriptors and layouts for one key, and the algorithm: the fastest of the heuristic's top
    candidates, timed once on the first call's operands (see _tune)."""

    def __init__(self, k: _Key):
        self.key = k
        self.desc = lt.matmul_desc_create(COMPUTE_32F, CUDA_R_32F)
        # cuBLASLt's first operand is row-major B, its second row-major A (see module docstring)
        _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.TRANSA, OP_T if k.trans_b else OP_N)
        _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.TRANSB, OP_T if k.trans_a else OP_N)
        _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.EPILOGUE, k.epilogue)
        if k.aux_ld:
            _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.EPILOGUE_AUX_LD, k.aux_ld)
        out_type = CUDA_R_32F if k.out_f32 else CUDA_R_16BF
        # column-major shapes (rows, cols) of the stored matrices
        self.a = self._layout(CUDA_R_16BF, (k.K, k.N) if k.trans_b else (k.N, k.K), k.ldb, k.batch, k.stride_b)
        self.b = self._layout(CUDA_R_16BF, (k.M, k.K) if k.trans_a else (k.K, k.M), k.lda, k.batch, k.stride_a)
        self.d = self._layout(out_type, (k.N, k.M), k.ldd, k.batch, k.stride_d)
        pref = lt.matmul_preference_create()
        P = lt.MatmulPreferenceAttribute
        _set(lt.matmul_preference_set_attribute, pref, P.MAX_WORKSPACE_BYTES, WORKSPACE_BYTES)
        for attr, align in zip((P.MIN_ALIGNMENT_A_BYTES, P.MIN_ALIGNMENT_B_BYTES, P.MIN_ALIGNMENT_C_BYTES,
                                P.MIN_ALIGNMENT_D_BYTES), (k.align[1], k.align[0], k.align[2], k.align[2])):
            _set(lt.matmul_preference_set_attribute, pref, attr, align)
        self.results = lt.MatmulHeuristicResult(CANDIDATES)
        found = np.zeros(1, dtype=np.int32)
        try:
            lt.matmul_algo_get_heuristic(_handle, self.desc, self.a, self.b, self.d, self.d, pref, CANDIDATES,
                                         self.results.ptr, found.ctypes.data)
        except lt.cuBLASLtError as e:
            raise LlmcError(f"cuBLASLt has no algorithm for {k}: {e}") from e
        finally:
            lt.matmul_preference_destroy(pref)
        self.candidates = [i for i in range(int(found[0])) if self.results.state[i] == 0]
        if not self.candidates:
            raise LlmcError(f"cuBLASLt has no algorithm for {k}")
        self.algo = self.results.ptr + self.candidates[0] * _RESULT_BYTES
        self.tuned = len(self.candidates) == 1 or 2 * k.M * k.N * k.K * k.batch < TUNE_MIN_FLOP

    @staticmethod
    def _layout(dtype: int, shape: tuple[int, int], ld: int, batch: int, stride: int) -> int:
        layout = lt.matrix_layout_create(dtype, shape[0], shape[1], ld)
        if batch > 1:
            _set(lt.matrix_layout_set_attribute, layout, lt.MatrixLayoutAttribute.BATCH_COUNT, batch)
            _set(lt.matrix_layout_set_attribute, layout, lt.MatrixLayoutAttribute.STRIDED_BATCH_OFFSET, stride)
        return layout

    def _tune(self, alpha: int, a: int, b: int, beta: int, c: int, d: int, in_place: bool, workspace: int,
              on) -> None:
        """Time each candidate on the call's own operands and keep the fastest. Runs once, eagerly,
        before any capture. A plain call just writes its outputs several times; one that accumulates
        in place (beta != 0, C = D) writes a temporary copy instead."""
        import cupy as cp
        k = self.key
        tmp = None
        if in_place:
            tmp = cp.empty((k.stride_d * (k.batch - 1) + k.ldd * k.M) * (4 if k.out_f32 else 2), dtype=cp.uint8)
            c = d = tmp.data.ptr
        start, end = cp.cuda.Event(), cp.cuda.Event()
        best = None
        for i in self.candidates:
            algo = self.results.ptr + i * _RESULT_BYTES
            try:
                for repeat in range(TUNE_RUNS + 1):
                    if repeat == 1:
                        start.record(on)
                    lt.matmul(_handle, self.desc, alpha, b, self.a, a, self.b, beta, c, self.d, d, self.d,
                              algo, workspace, WORKSPACE_BYTES, on.ptr)
                end.record(on)
                end.synchronize()
            except lt.cuBLASLtError:
                continue
            ms = cp.cuda.get_elapsed_time(start, end)
            if best is None or ms < best[0]:
                best = (ms, algo)
        if best is not None:
            self.algo = best[1]
        self.tuned = True
        if tmp is not None:
            del tmp
            cp.get_default_memory_pool().free_all_blocks()


@functools.cache
def _plan(key: _Key) -> _Plan:
    return _Plan(key)


@functools.cache
def _scalar(value: float) -> np.ndarray:
    return np.array([value], dtype=np.float32)  # host-pointer alpha/beta, kept alive


def _ptr_attr(plan: _Plan, attr, value: int) -> None:
    _set(lt.matmul_desc_set_attribute, plan.desc, attr, value)


def gemm(d: int, a: int, b: int, M: int, N: int, K: int, *, lda: int, ldb: int, ldd: int,
         trans_a: bool = False, trans_b: bool = False, out_f32: bool = False, alpha: float = 1.0,
         beta: float = 0.0, c: int = 0, epilogue: int = Epilogue.DEFAULT, bias: int = 0, aux: int = 0,
         aux_ld: int = 0, batch: int = 1, stride_a: int = 0, stride_b: int = 0, stride_d: int = 0,
         on=None) -> None:
    """Row-major D (M, N) [ld ldd] = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, on device pointers;
    C is D unless c is given (laid out as D). op(A) = A^T when trans_a (A stored (K, M)), likewise B.
    bias (N) and aux (M, N) [ld aux_ld] serve the epilogue. Batches are strided by element counts.
    `on`: the stream (default: the backend's); each stream has its own workspace, so GEMMs on two
    streams may run at once."""
    on = on or stream
    workspace = scratch(f"cublaslt_workspace_{on.ptr}", WORKSPACE_BYTES)
    d_bytes = 4 if out_f32 else 2  # batches start at multiples of the strides: fold them in
    align = (_alignment(a | stride_a * 2), _alignment(b | stride_b * 2),
             min(_alignment(d | stride_d * d_bytes), _alignment(c), _alignment(bias), _alignment(aux)))
    key = _Key(M, N, K, trans_a, trans_b, lda, ldb, ldd, out_f32, int(epilogue), aux_ld, batch,
               stride_a, stride_b, stride_d, align)
    plan = _plan(key)
    if bias:
        _ptr_attr(plan, lt.MatmulDescAttribute.BIAS_POINTER, bias)
    if aux:
        _ptr_attr(plan, lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, aux)
    alpha_ptr, beta_ptr = _scalar(alpha).ctypes.data, _scalar(beta).ctypes.data
    c = c or d
    if not plan.tuned and not on.is_capturing():
        plan._tune(alpha_ptr, a, b, beta_ptr, c, d, beta != 0.0 and c == d, workspace.data.ptr, on)
    lt.matmul(_handle, plan.desc, alpha_ptr, b, plan.a, a, plan.b, beta_ptr, c, plan.d, d, plan.d, plan.algo,
              workspace.data.ptr, WORKSPACE_BYTES, on.ptr)

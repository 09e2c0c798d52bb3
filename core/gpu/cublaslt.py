"""Row-major GEMMs through raw cuBLASLt (nvmath-python's bindings): bf16 operands (or FP8 ones with their
per-tensor scales, -f8 1), fp32 accumulate, bf16 or fp32 output, optional bias/GELU/dGELU epilogues, strided
batches. CuPy's own cuBLAS refuses
CUDA-graph capture; these calls are captured like any kernel. A plan (descriptors, layouts and the
algorithm) is built once per shape and cached; pointers are set per call.

The algorithm is the fastest of the heuristic's top candidates and of their neighbours (the same kernel
with other cluster shapes, CTA swizzling and custom options, which the heuristic does not rank), timed
on first use: the neighbours can beat the heuristic's best (PERF.md, session 5).
The choice is kept on disk per GPU and cuBLASLt version (core/gpu/tuning_cache.py, as PyTorch's TunableOp
keeps its results), so later runs start without timing and take the same algorithms.

cuBLASLt is column-major: a row-major (r, c) matrix with leading dimension ld is its column-major
(c, r) transpose, so D = op(A) @ op(B) is computed as D^T = op(B)^T @ op(A)^T.
"""

import ctypes
import functools
import itertools
from dataclasses import dataclass

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.gpu.runtime import cp, current, scratch, time_ms
from llmc.core.gpu.tuning_cache import cached, remember

try:
    from nvmath.bindings import cublasLt as lt
except ImportError as e:
    raise LlmcError("nvmath-python is not installed: pip install 'llmc[gpu]' (it provides cuBLASLt)") from e

CUDA_R_32F, CUDA_R_16BF, CUDA_R_8F_E4M3, CUDA_R_8F_E5M2, COMPUTE_32F = 0, 14, 28, 29, 68
OP_N, OP_T = 0, 1
WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper
CANDIDATES = 32  # heuristic's algorithms timed per shape
VARIED = 8  # of which the first VARIED are also timed with other launch configurations:
CLUSTER_SHAPES = (2, 3, 5, 6)  # cublasLtClusterShape_t 1x1, 2x1, 1x2, 2x2
TUNE_RUNS, FINAL_RUNS, FINALISTS = 1, 8, 4  # every candidate timed once, the fastest few again
TUNE_MIN_FLOP = 2e9  # smaller products take the heuristic's first choice untimed
_RESULT_BYTES = lt.matmul_heuristic_result_dtype.itemsize
_ALGO_BYTES = lt.matmul_algo_dtype.itemsize
Epilogue = lt.Epilogue
Config = lt.MatmulAlgoConfigAttribute
# what identifies an algorithm (the order in which the disk cache stores it)
CONFIG_FIELDS = (Config.ID, Config.TILE_ID, Config.STAGES_ID, Config.SPLITK_NUM, Config.REDUCTION_SCHEME,
                 Config.CTA_SWIZZLING, Config.CUSTOM_OPTION, Config.INNER_SHAPE_ID, Config.CLUSTER_SHAPE_ID)



@functools.cache
def _unit_scale():
    return cp.ones(1, dtype=cp.float32)


@functools.cache
def _handle() -> int:
    """The cuBLASLt handle, created at the first GEMM."""
    return lt.create()


def _set(setter, obj, attr, value) -> None:
    getter = {lt.matmul_desc_set_attribute: lt.get_matmul_desc_attribute_dtype,
              lt.matrix_layout_set_attribute: lt.get_matrix_layout_attribute_dtype,
              lt.matmul_preference_set_attribute: lt.get_matmul_preference_attribute_dtype,
              lt.matmul_algo_config_set_attribute: lt.get_matmul_algo_config_attribute_dtype}[setter]
    buf = np.array([value], dtype=getter(attr))
    setter(obj, attr, buf.ctypes.data, buf.nbytes)


def _get(getter, obj, attr, dtype_of) -> int:
    buf, written = np.zeros(1, dtype=dtype_of(attr)), np.zeros(1, dtype=np.uint64)
    getter(obj, attr, buf.ctypes.data, buf.nbytes, written.ctypes.data)
    return int(buf[0])


def _config(algo: np.ndarray) -> tuple[int, ...]:
    return tuple(_get(lt.matmul_algo_config_get_attribute, algo.ctypes.data, f,
                      lt.get_matmul_algo_config_attribute_dtype) for f in CONFIG_FIELDS)


def _capability(algo: np.ndarray, attr) -> int:
    return _get(lt.matmul_algo_cap_get_attribute, algo.ctypes.data, attr, lt.get_matmul_algo_cap_attribute_dtype)


def _configured(algo: np.ndarray, config: tuple[int, ...]) -> np.ndarray:
    """A copy of algo with the configuration fields set to config."""
    algo = algo.copy()
    for field, value in zip(CONFIG_FIELDS[1:], config[1:]):
        _set(lt.matmul_algo_config_set_attribute, algo.ctypes.data, field, value)
    return algo


def _cached_config(key: "_Key") -> tuple[int, ...] | None:
    config = cached(repr(key))
    well_formed = isinstance(config, list) and len(config) == len(CONFIG_FIELDS)
    return tuple(config) if well_formed and all(isinstance(v, int) for v in config) else None


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
    a_type: int = CUDA_R_16BF
    b_type: int = CUDA_R_16BF
    fast_accum: bool = False  # FP8 only: Hopper's faster, less exact accumulation

    def __repr__(self) -> str:
        """The disk cache's key; a bf16 GEMM's is what it was before FP8 (its cached choices still apply)."""
        fields = [f"{f}={getattr(self, f)!r}" for f in self.__dataclass_fields__]
        return f"_Key({', '.join(fields if self.a_type != CUDA_R_16BF else fields[:-3])})"


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
        out_type = CUDA_R_32F if k.out_f32 else CUDA_R_16BF
        if k.aux_ld:
            _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.EPILOGUE_AUX_LD, k.aux_ld)
        if k.a_type != CUDA_R_16BF:  # FP8: the bias and GELU input stay in the output's bf16
            _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.FAST_ACCUM, int(k.fast_accum))
            # scaled from the start: the heuristic is asked about the GEMM the calls run (their own pointers later)
            for attr in (lt.MatmulDescAttribute.A_SCALE_POINTER, lt.MatmulDescAttribute.B_SCALE_POINTER):
                _set(lt.matmul_desc_set_attribute, self.desc, attr, _unit_scale().data.ptr)
            _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.BIAS_DATA_TYPE, out_type)
            if k.aux_ld:
                _set(lt.matmul_desc_set_attribute, self.desc, lt.MatmulDescAttribute.EPILOGUE_AUX_DATA_TYPE, out_type)
        # column-major shapes (rows, cols) of the stored matrices
        self.a = self._layout(k.b_type, (k.K, k.N) if k.trans_b else (k.N, k.K), k.ldb, k.batch, k.stride_b)
        self.b = self._layout(k.a_type, (k.M, k.K) if k.trans_a else (k.K, k.M), k.lda, k.batch, k.stride_a)
        self.d = self._layout(out_type, (k.N, k.M), k.ldd, k.batch, k.stride_d)
        pref = lt.matmul_preference_create()
        P = lt.MatmulPreferenceAttribute
        _set(lt.matmul_preference_set_attribute, pref, P.MAX_WORKSPACE_BYTES, WORKSPACE_BYTES)
        for attr, align in zip((P.MIN_ALIGNMENT_A_BYTES, P.MIN_ALIGNMENT_B_BYTES, P.MIN_ALIGNMENT_C_BYTES,
                                P.MIN_ALIGNMENT_D_BYTES), (k.align[1], k.align[0], k.align[2], k.align[2])):
            _set(lt.matmul_preference_set_attribute, pref, attr, align)
        results = lt.MatmulHeuristicResult(CANDIDATES)
        found = np.zeros(1, dtype=np.int32)
        try:
            lt.matmul_algo_get_heuristic(_handle(), self.desc, self.a, self.b, self.d, self.d, pref, CANDIDATES,
                                         results.ptr, found.ctypes.data)
        except lt.cuBLASLtError as e:
            raise LlmcError(f"cuBLASLt has no algorithm for {k}: {e}") from e
        finally:
            lt.matmul_preference_destroy(pref)
        # each result starts with its algorithm: copied out, the results may go
        self.candidates = [np.frombuffer(ctypes.string_at(results.ptr + i * _RESULT_BYTES, _ALGO_BYTES),
                                         dtype=np.uint8).copy()
                           for i in range(int(found[0])) if results.state[i] == 0]
        if not self.candidates:
            raise LlmcError(f"cuBLASLt has no algorithm for {k}")
        self.tuned = 2 * k.M * k.N * k.K * k.batch < TUNE_MIN_FLOP
        self.chosen = self.candidates[0]
        self.untried = list(self.candidates)  # what fall_back may still take
        cached = None if self.tuned else _cached_config(k)
        if cached is not None and (algo := self._from_config(cached)) is not None:
            self.chosen, self.tuned = algo, True

    @property
    def algo(self) -> int:
        return self.chosen.ctypes.data

    def _valid(self, algo: np.ndarray) -> bool:
        """cuBLASLt accepts algo for this plan, within the workspace and the pointers' alignments."""
        result = lt.MatmulHeuristicResult(1)
        try:
            lt.matmul_algo_check(_handle(), self.desc, self.a, self.b, self.d, self.d, algo.ctypes.data, result.ptr)
        except lt.cuBLASLtError:
            return False
        Cap, align = lt.MatmulAlgoCapAttribute, self.key.align  # cuBLASLt's A is our B (module docstring)
        needs = zip((Cap.MIN_ALIGNMENT_A_BYTES, Cap.MIN_ALIGNMENT_B_BYTES, Cap.MIN_ALIGNMENT_C_BYTES,
                     Cap.MIN_ALIGNMENT_D_BYTES), (align[1], align[0], align[2], align[2]))
        return (int(result.workspace_size) <= WORKSPACE_BYTES
                and all(_capability(algo, cap) <= have for cap, have in needs))

    def _from_config(self, config: tuple[int, ...]) -> np.ndarray | None:
        """The algorithm a configuration names, if cuBLASLt has it and accepts it for this plan."""
        out_type = CUDA_R_32F if self.key.out_f32 else CUDA_R_16BF
        algo = np.zeros(_ALGO_BYTES, dtype=np.uint8)
        try:
            lt.matmul_algo_init(_handle(), COMPUTE_32F, CUDA_R_32F, self.key.b_type, self.key.a_type, out_type,
                                out_type, config[0], algo.ctypes.data)
            algo = _configured(algo, config)
        except (lt.cuBLASLtError, OverflowError):  # an id or a value this cuBLASLt lacks
            return None
        return algo if self._valid(algo) else None

    def _neighbours(self) -> list[np.ndarray]:
        """The first VARIED candidates with every cluster shape, CTA swizzling and custom option
        cuBLASLt accepts for them, without split-k; the heuristic's own configurations excluded."""
        seen = {_config(a) for a in self.candidates}
        found = []
        for algo in self.candidates[:VARIED]:
            base = _config(algo)
            swizzles = range(2 if _capability(algo, lt.MatmulAlgoCapAttribute.CTA_SWIZZLING_SUPPORT) else 1)
            options = range(_capability(algo, lt.MatmulAlgoCapAttribute.CUSTOM_OPTION_MAX) + 1)
            for cluster, swizzle, option in itertools.product(CLUSTER_SHAPES, swizzles, options):
                config = base[:3] + (1, 0, swizzle, option, base[7], cluster)
                if config in seen:
                    continue
                seen.add(config)
                try:
                    variant = _configured(algo, config)
                except lt.cuBLASLtError:
                    continue
                if self._valid(variant):
                    found.append(variant)
        return found

    @staticmethod
    def _runs(call) -> bool:
        try:
            call()
        except lt.cuBLASLtError:
            return False
        return True

    def fall_back(self) -> bool:
        """After the chosen algorithm failed to run: the heuristic's next candidate (False when none is left)."""
        self.untried = [a for a in self.untried if a is not self.chosen]
        if not self.untried:
            return False
        self.chosen = self.untried[0]
        return True

    @staticmethod
    def _layout(dtype: int, shape: tuple[int, int], ld: int, batch: int, stride: int) -> int:
        layout = lt.matrix_layout_create(dtype, shape[0], shape[1], ld)
        if batch > 1:
            _set(lt.matrix_layout_set_attribute, layout, lt.MatrixLayoutAttribute.BATCH_COUNT, batch)
            _set(lt.matrix_layout_set_attribute, layout, lt.MatrixLayoutAttribute.STRIDED_BATCH_OFFSET, stride)
        return layout

    def _tune(self, alpha: int, a: int, b: int, beta: int, c: int, d: int, in_place: bool, workspace: int,
              on) -> None:
        """Time the candidates and their neighbours on the call's own operands, keep the fastest and
        remember it on disk. Runs once, eagerly, before any capture. A plain call just writes its outputs
        several times; one that accumulates in place (beta != 0, C = D) writes a temporary copy instead."""
        k = self.key
        tmp = None
        if in_place:
            tmp = cp.empty((k.stride_d * (k.batch - 1) + k.ldd * k.M) * (4 if k.out_f32 else 2), dtype=cp.uint8)
            c = d = tmp.data.ptr

        def ms(algo: np.ndarray, runs: int) -> float:
            return time_ms(lambda: lt.matmul(_handle(), self.desc, alpha, b, self.a, a, self.b, beta, c, self.d, d,
                                             self.d, algo.ctypes.data, workspace, WORKSPACE_BYTES, on.ptr), runs, on)

        timed = []
        for algo in self.candidates + self._neighbours():
            try:
                timed.append((ms(algo, TUNE_RUNS), len(timed), algo))
            except lt.cuBLASLtError:
                continue
        finalists = [(ms(algo, FINAL_RUNS), i, algo) for _, i, algo in sorted(timed)[:FINALISTS]]
        if finalists:
            fastest = min(finalists)[2]
            config = _config(fastest)
            rebuilt = self._from_config(config)  # as later runs will build it from the disk cache
            if rebuilt is not None and not self._runs(lambda: ms(rebuilt, 1)):
                rebuilt = None  # accepted by cuBLASLt's check, refused when run
            if rebuilt is None:
                self.chosen = fastest  # usable here, not from its configuration: not kept
            else:
                self.chosen = rebuilt
                remember(repr(k), list(config))
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
         a_type: int = CUDA_R_16BF, b_type: int = CUDA_R_16BF, a_scale: int = 0, b_scale: int = 0,
         fast_accum: bool = False, on=None) -> None:
    """Row-major D (M, N) [ld ldd] = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, on device pointers;
    C is D unless c is given (laid out as D). op(A) = A^T when trans_a (A stored (K, M)), likewise B.
    bias (N) and aux (M, N) [ld aux_ld] serve the epilogue. Batches are strided by element counts.
    FP8 operands (a_type, b_type CUDA_R_8F_E4M3 or _E5M2, not both E5M2) take only D = A @ B^T (trans_b,
    cuBLASLt's "TN") and multiply the product by *a_scale * *b_scale (fp32 device pointers).
    `on`: the stream (default: the backend's); each stream has its own workspace, so GEMMs on two
    streams may run at once."""
    on = on or current().stream
    workspace = scratch(f"cublaslt_workspace_{on.ptr}", WORKSPACE_BYTES)
    d_bytes = 4 if out_f32 else 2  # batches start at multiples of the strides: fold them in
    align = (_alignment(a | stride_a * 2), _alignment(b | stride_b * 2),
             min(_alignment(d | stride_d * d_bytes), _alignment(c), _alignment(bias), _alignment(aux)))
    key = _Key(M, N, K, trans_a, trans_b, lda, ldb, ldd, out_f32, int(epilogue), aux_ld, batch,
               stride_a, stride_b, stride_d, align, a_type, b_type, fast_accum)
    plan = _plan(key)
    if a_scale or b_scale:  # cuBLASLt's A is our B (module docstring)
        _ptr_attr(plan, lt.MatmulDescAttribute.A_SCALE_POINTER, b_scale)
        _ptr_attr(plan, lt.MatmulDescAttribute.B_SCALE_POINTER, a_scale)
    if bias:
        _ptr_attr(plan, lt.MatmulDescAttribute.BIAS_POINTER, bias)
    if aux:
        _ptr_attr(plan, lt.MatmulDescAttribute.EPILOGUE_AUX_POINTER, aux)
    alpha_ptr, beta_ptr = _scalar(alpha).ctypes.data, _scalar(beta).ctypes.data
    c = c or d
    if not plan.tuned and not on.is_capturing():
        plan._tune(alpha_ptr, a, b, beta_ptr, c, d, beta != 0.0 and c == d, workspace.data.ptr, on)
    while True:
        try:
            return lt.matmul(_handle(), plan.desc, alpha_ptr, b, plan.a, a, plan.b, beta_ptr, c, plan.d, d, plan.d,
                             plan.algo, workspace.data.ptr, WORKSPACE_BYTES, on.ptr)
        except lt.cuBLASLtError as e:
            if on.is_capturing() or not plan.fall_back():
                raise LlmcError(f"cuBLASLt cannot run {key}: {e}") from e

"""Causal multi-head attention on the fused qkv layout (B, T, (NH + 2 NKV) * HS): NH query heads, then NKV
key heads, then NKV value heads (GPT-2: NKV = NH, (B, T, 3, NH, HS); Llama 3: grouped-query attention, query
head h with key/value head h // (NH / NKV)).

cuDNN's fused flash attention (SDPA) through nvidia-cudnn-frontend when available: q, k and v are
strided views into qkv (no permute kernels), one forward and one backward graph per shape, built
once; cuDNN takes grouped heads directly (k and v views of NKV heads). The saved state is the softmax
log-sum-exp (B, NH, T). Without cuDNN (or for a shape it rejects), a fallback computes the same thing from
cuBLASLt batched matmuls over the heads of one batch element at a time and the softmax kernels of
kernels/attention.cu, keeping the same state; with NKV < NH it first repeats the key/value heads into a
GPT-2 layout in scratch (and sums their gradients back over each group). The
fallback takes any head size and alignment (cuBLASLt is told the pointers' alignment); cuDNN runs where
the head size is a multiple of 8 and the tensors are 16-byte aligned (_cudnn_takes).
"""

import math
import sys
from dataclasses import dataclass

import numpy as np

from llmc.core.gpu import cudnn
from llmc.core.gpu.cublaslt import gemm
from llmc.core.gpu.runtime import (BF16, after_side_work, aligned, cdiv, check, check_arrays, current, launch,
                                   pack_width, scratch, settle)


# "cudnn": cuDNN's SDPA wherever it is installed and takes the shape, else the fallback; "fallback":
# always the fallback (tests set it to check the fallback where cuDNN would run)
IMPLEMENTATION = "cudnn"


def attention_stats_shape(B: int, T: int, NH: int) -> tuple[int, ...]:
    return (B, NH, T)


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    NH: int
    HS: int
    NKV: int  # key/value heads: NH but in grouped-query attention

    @property
    def C(self) -> int:
        return self.NH * self.HS

    @property
    def row(self) -> int:
        """Channels of a qkv row."""
        return (self.NH + 2 * self.NKV) * self.HS


def _shape(op: str, qkv, out, stats, num_heads: int, num_kv_heads: int | None) -> Shape:
    check_arrays(op, BF16, qkv, out)
    check_arrays(op, np.float32, stats)
    NH, NKV = num_heads, num_heads if num_kv_heads is None else num_kv_heads
    check(NH > 0 and NKV > 0 and NH % NKV == 0, f"{op}: {NH} query heads not a multiple of {NKV} key/value heads")
    heads = NH + 2 * NKV
    check(qkv.ndim == 3 and qkv.shape[2] % heads == 0, f"{op}: qkv must be (B, T, (NH+2*NKV)*HS) with {heads} heads")
    B, T, row = qkv.shape
    C = row // heads * NH
    check(out.shape == (B, T, C), f"{op}: attention output must be ({B}, {T}, {C})")
    check(stats.shape == (B, NH, T), f"{op}: stats must be {attention_stats_shape(B, T, NH)}")
    return Shape(B, T, NH, row // heads, NKV)


def _cudnn_takes(s: Shape, *arrays) -> bool:
    """cuDNN's fused attention moves 16-byte vectors of bf16: every bf16 tensor's start (k and v lie
    multiples of 2 HS bytes past q in a qkv row) and every stride (the head size) must be a multiple of
    16 bytes. (Its fp32 stats may start at any 4-byte offset: the same results, measured.) A shape cuDNN
    rejects besides (a head size it has no kernel for) is found when its graph is built (_cudnn)."""
    return s.HS % 8 == 0 and aligned(*arrays)


# ----------------------------------------------------------------------------- cuDNN

class _CudnnSdpa:
    """cuDNN forward and backward graphs for one shape; tensors are strided views into qkv/dqkv (k and v
    with NKV heads: cuDNN's SDPA takes grouped-query attention as it is)."""
    def __init__(self, s: Shape):
        dt = cudnn.module().data_type
        self.dims, self.kv_dims = [s.B, s.NH, s.T, s.HS], [s.B, s.NKV, s.T, s.HS]
        self.qkv_stride = [s.T * s.row, s.HS, s.row, 1]
        self.out_stride = [s.T * s.C, s.HS, s.C, 1]
        self.stats_dims, self.stats_stride = [s.B, s.NH, s.T, 1], [s.NH * s.T, s.T, 1, 1]
        self.scale = 1.0 / math.sqrt(s.HS)
        self.shape = s
        self.fwd = self.bwd = None
        self.io, self.f32 = dt.BFLOAT16, dt.FLOAT

    def _graph(self):
        return cudnn.module().pygraph(io_data_type=self.io, intermediate_data_type=self.f32,
                                      compute_data_type=self.f32, handle=cudnn.handle())

    def _tensor(self, g, name: str, stride: list[int], dims: list[int] | None = None):
        return g.tensor(name=name, dim=dims or self.dims, stride=stride, data_type=self.io)

    def _qkv(self, g) -> tuple:
        return (self._tensor(g, "q", self.qkv_stride), self._tensor(g, "k", self.qkv_stride, self.kv_dims),
                self._tensor(g, "v", self.qkv_stride, self.kv_dims))

    def _mask(self) -> dict:
        return dict(attn_scale=self.scale, diagonal_alignment=cudnn.module().diagonal_alignment.TOP_LEFT,
                    diagonal_band_right_bound=0)

    def build_forward(self) -> None:
        g = self._graph()
        q, k, v = self._qkv(g)
        o, stats = g.sdpa(name="sdpa", q=q, k=k, v=v, generate_stats=True, **self._mask())
        o.set_output(True).set_dim(self.dims).set_stride(self.out_stride).set_data_type(self.io)
        stats.set_output(True).set_dim(self.stats_dims).set_stride(self.stats_stride).set_data_type(self.f32)
        g.build([cudnn.module().heur_mode.A])
        self.fwd, self.fwd_tensors = g, (q, k, v, o, stats)

    def build_backward(self) -> None:
        """Deterministic, as llm.c asks for it: cuDNN's default accumulates dq in whatever order its blocks
        finish, so two runs (a run and its -y 1 resume) drift apart. Where cuDNN has no deterministic kernel,
        its default one, said once."""
        try:
            self._build_backward(deterministic=True)
        except Exception as e:  # cudnn raises its own error types for unsupported graphs
            print(f"llmc: cuDNN has no deterministic attention backward for {self.shape} ({e}); runs of this "
                  f"shape may differ in their last bits", file=sys.stderr)
            self._build_backward(deterministic=False)

    def _build_backward(self, deterministic: bool) -> None:
        g = self._graph()
        q, k, v = self._qkv(g)
        o = self._tensor(g, "o", self.out_stride)
        do = self._tensor(g, "do", self.out_stride)
        stats = g.tensor(name="stats", dim=self.stats_dims, stride=self.stats_stride, data_type=self.f32)
        dq, dk, dv = g.sdpa_backward(name="sdpa_backward", q=q, k=k, v=v, o=o, dO=do, stats=stats,
                                     use_deterministic_algorithm=deterministic, **self._mask())
        for t, dims in ((dq, self.dims), (dk, self.kv_dims), (dv, self.kv_dims)):
            t.set_output(True).set_dim(dims).set_stride(self.qkv_stride).set_data_type(self.io)
        g.build([cudnn.module().heur_mode.A])
        self.bwd, self.bwd_tensors = g, (q, k, v, o, do, stats, dq, dk, dv)

    def _workspace(self, g) -> int:
        return scratch("cudnn_workspace", g.get_workspace_size()).data.ptr

    def _kv(self) -> tuple[int, int]:
        """Bytes from q to k and to v within a qkv row."""
        s = self.shape
        return 2 * s.C, 2 * (s.C + s.NKV * s.HS)

    def forward(self, out, stats, qkv) -> None:
        q, k, v, o, st = self.fwd_tensors
        p, (ek, ev) = qkv.data.ptr, self._kv()
        self.fwd.execute({q: p, k: p + ek, v: p + ev, o: out.data.ptr, st: stats.data.ptr},
                         self._workspace(self.fwd), handle=cudnn.handle())

    def backward(self, dqkv, dout, qkv, out, stats) -> None:
        q, k, v, o, do, st, dq, dk, dv = self.bwd_tensors
        p, d, (ek, ev) = qkv.data.ptr, dqkv.data.ptr, self._kv()
        self.bwd.execute({q: p, k: p + ek, v: p + ev, o: out.data.ptr, do: dout.data.ptr, st: stats.data.ptr,
                          dq: d, dk: d + ek, dv: d + ev}, self._workspace(self.bwd), handle=cudnn.handle())


_sdpa: dict[Shape, _CudnnSdpa] = {}
_rejected: set[tuple[Shape, str]] = set()


def _cudnn(s: Shape, direction: str, *arrays) -> _CudnnSdpa | None:
    """The shape's cuDNN graphs with `direction` built, or None (the fallback runs) where cuDNN
    is absent or rejects the shape or the bf16 arrays' alignment."""
    if (IMPLEMENTATION != "cudnn" or cudnn.module() is None or (s, direction) in _rejected
            or not _cudnn_takes(s, *arrays)):
        return None
    sdpa = _sdpa.get(s) or _sdpa.setdefault(s, _CudnnSdpa(s))
    if getattr(sdpa, {"forward": "fwd", "backward": "bwd"}[direction]) is None:
        check(not current().stream.is_capturing(), "attention: cuDNN graphs must be built before a CUDA graph capture")
        try:
            getattr(sdpa, f"build_{direction}")()
        except Exception as e:  # cudnn raises its own error types for unsupported graphs
            print(f"llmc: cuDNN attention {direction} unavailable for {s} ({e}); using the fallback",
                  file=sys.stderr)
            _rejected.add((s, direction))
            return None
    return sdpa


# ----------------------------------------------------------------------------- fallback

def _scores(s: Shape, b: int, qkv) -> tuple:
    """S (NH, T, T) fp32 = scale * q k^T for batch element b; returns (S, P) scratch buffers."""
    T, C, HS, NH = s.T, s.C, s.HS, s.NH
    S = scratch("attention_S", NH * T * T * 4)
    P = scratch("attention_P", NH * T * T * 2)
    q = qkv.data.ptr + b * T * 3 * C * 2
    gemm(S.data.ptr, q, q + 2 * C, T, T, HS, lda=3 * C, ldb=3 * C, ldd=T, trans_b=True, out_f32=True,
         alpha=1.0 / math.sqrt(HS), batch=NH, stride_a=HS, stride_b=HS, stride_d=T * T)
    return S, P


def _fallback_forward(s: Shape, out, stats, qkv) -> None:
    T, C, HS, NH = s.T, s.C, s.HS, s.NH
    for b in range(s.B):
        S, P = _scores(s, b, qkv)
        launch("attention", "attention_softmax_forward", NH * T, 256,
               (P, np.uint64(stats.data.ptr + b * NH * T * 4), S, np.int32(T), np.int32(1)))
        v = qkv.data.ptr + (b * T * 3 * C + 2 * C) * 2
        gemm(out.data.ptr + b * T * C * 2, P.data.ptr, v, T, HS, T, lda=T, ldb=3 * C, ldd=C,
             batch=NH, stride_a=T * T, stride_b=HS, stride_d=HS)


def _fallback_backward(s: Shape, dqkv, dout, qkv, stats) -> None:
    T, C, HS, NH = s.T, s.C, s.HS, s.NH
    for b in range(s.B):
        S, P = _scores(s, b, qkv)
        launch("attention", "attention_softmax_forward", NH * T, 256,
               (P, np.uint64(stats.data.ptr + b * NH * T * 4), S, np.int32(T), np.int32(0)))
        q = qkv.data.ptr + b * T * 3 * C * 2
        dq = dqkv.data.ptr + b * T * 3 * C * 2
        do = dout.data.ptr + b * T * C * 2
        batched = dict(batch=NH, stride_a=T * T, stride_b=HS, stride_d=HS)
        # dv = P^T dout
        gemm(dq + 4 * C, P.data.ptr, do, T, HS, T, lda=T, ldb=C, ldd=3 * C, trans_a=True, **batched)
        # dP = dout v^T, over S
        gemm(S.data.ptr, do, q + 4 * C, T, T, HS, lda=C, ldb=3 * C, ldd=T, trans_b=True, out_f32=True,
             batch=NH, stride_a=HS, stride_b=HS, stride_d=T * T)
        launch("attention", "attention_softmax_backward", NH * T, 256,
               (P, S, np.int32(T), np.float32(1.0 / math.sqrt(HS))))
        # dq = dS k, dk = dS^T q
        gemm(dq, P.data.ptr, q + 2 * C, T, HS, T, lda=T, ldb=3 * C, ldd=3 * C, **batched)
        gemm(dq + 2 * C, P.data.ptr, q, T, HS, T, lda=T, ldb=3 * C, ldd=3 * C, trans_a=True, **batched)


def _wide(s: Shape) -> Shape:
    """The GPT-2 shape the fallback runs a grouped shape at: every query head with its own key/value head."""
    return Shape(s.B, s.T, s.NH, s.HS, s.NH)


def _repeat_kv(s: Shape, qkv):
    """qkv with each key/value head repeated over its group (GPT-2's layout), in scratch."""
    wide = scratch("attention_wide_qkv", s.B * s.T * 3 * s.C * 2).view(BF16)[:s.B * s.T * 3 * s.C]
    pack = pack_width(s.HS, qkv)  # the wide buffer is 256-byte aligned, its rows multiples of HS
    launch("attention", "attention_repeat_kv", cdiv(wide.size // pack, 256), 256,
           (wide, qkv, np.int64(s.B * s.T), np.int32(s.NH), np.int32(s.NKV), np.int32(s.HS)), pack=pack)
    return wide


def _grouped_fallback_forward(s: Shape, out, stats, qkv) -> None:
    _fallback_forward(_wide(s), out, stats, _repeat_kv(s, qkv))


def _grouped_fallback_backward(s: Shape, dqkv, dout, qkv, stats) -> None:
    wide = _repeat_kv(s, qkv)
    dwide = scratch("attention_wide_dqkv", wide.nbytes).view(BF16)[:wide.size]
    _fallback_backward(_wide(s), dwide, dout, wide, stats)
    pack = pack_width(s.HS, dqkv)
    launch("attention", "attention_reduce_kv", cdiv(dqkv.size // pack, 256), 256,
           (dqkv, dwide, np.int64(s.B * s.T), np.int32(s.NH), np.int32(s.NKV), np.int32(s.HS)), pack=pack)


# ----------------------------------------------------------------------------- the primitives

@after_side_work
def attention_forward(out, stats, qkv, num_heads: int, num_kv_heads: int | None = None) -> None:
    """Causal attention, scale 1/sqrt(HS): out (B,T,NH*HS) from qkv (B,T,(NH+2*NKV)*HS), NKV = num_kv_heads
    (default NH); stats (B,NH,T) log-sum-exp."""
    s = _shape("attention_forward", qkv, out, stats, num_heads, num_kv_heads)
    sdpa = _cudnn(s, "forward", qkv, out)
    if sdpa is not None:
        sdpa.forward(out, stats, qkv)
    elif s.NKV == s.NH:
        _fallback_forward(s, out, stats, qkv)
    else:
        _grouped_fallback_forward(s, out, stats, qkv)


def attention_backward(dqkv, dout, qkv, out, stats, num_heads: int, num_kv_heads: int | None = None) -> None:
    """dqkv (B,T,(NH+2*NKV)*HS) = gradient of attention_forward given dout (B,T,NH*HS)."""
    s = _shape("attention_backward", qkv, out, stats, num_heads, num_kv_heads)
    check_arrays("attention_backward", BF16, dqkv, dout)
    check(dqkv.shape == qkv.shape and dout.shape == out.shape, "attention_backward: gradient shapes differ")
    settle(reads=(dout, qkv, out, stats), writes=(dqkv,))
    sdpa = _cudnn(s, "backward", dqkv, dout, qkv, out)
    if sdpa is not None:
        sdpa.backward(dqkv, dout, qkv, out, stats)
    elif s.NKV == s.NH:
        _fallback_backward(s, dqkv, dout, qkv, stats)
    else:
        _grouped_fallback_backward(s, dqkv, dout, qkv, stats)

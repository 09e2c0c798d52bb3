"""The MLP's first GEMM with its bias and GELU: pre = inp @ weight.T + bias and out = gelu(pre) (tanh
form), both written in bf16 from one fp32 accumulator, by whichever of cuBLASLt's GELU_AUX_BIAS epilogue
and a cuDNN graph (matmul -> add -> gelu, a kernel cuDNN's runtime-fusion engine compiles for the
shape) is faster on this GPU.

cuBLASLt's GELU epilogue runs well below the same GEMM with only a bias, and cuDNN's kernel can beat it
(PERF.md, session 8); cuDNN's graphs for the backward's dGELU epilogue and for GELU as the next GEMM's
prologue were slower than cuBLASLt, so those stay there. The choice is timed once per shape and kept on disk beside cuBLASLt's algorithms, so later runs take the
same kernel without timing (the two may round GELU's output differently in the last bit)."""

from collections.abc import Callable
from dataclasses import dataclass

from llmc.core.gpu import cudnn
from llmc.core.gpu.runtime import check, current, rows, scratch, time_ms
from llmc.core.gpu.tuning_cache import cached, remember

RUNS = 8  # timed runs of each candidate, after one untimed
CUBLASLT = "cublaslt"


@dataclass(frozen=True)
class _Key:
    N: int
    C: int
    OC: int


class _Graph:
    """The cuDNN graph for one shape and its plans: those of cuDNN's fallback list, whose runtime-fusion
    plan with default knobs is as fast as the best of all the plans cuDNN offers (PERF.md, session 8)."""

    def __init__(self, k: _Key):
        lib = cudnn.module()
        dt = lib.data_type
        g = lib.pygraph(io_data_type=dt.BFLOAT16, intermediate_data_type=dt.FLOAT, compute_data_type=dt.FLOAT,
                        handle=cudnn.handle())
        self.inp = g.tensor(name="inp", dim=[1, k.N, k.C], stride=[k.N * k.C, k.C, 1], data_type=dt.BFLOAT16)
        # weight (OC, C) row-major is the (C, OC) operand column-major
        self.weight = g.tensor(name="weight", dim=[1, k.C, k.OC], stride=[k.OC * k.C, 1, k.C], data_type=dt.BFLOAT16)
        self.bias = g.tensor(name="bias", dim=[1, 1, k.OC], stride=[k.OC, k.OC, 1], data_type=dt.BFLOAT16)
        product = g.matmul(name="matmul", A=self.inp, B=self.weight, compute_data_type=dt.FLOAT)
        self.pre = g.add(name="bias_add", a=product, b=self.bias, compute_data_type=dt.FLOAT)
        self.out = g.gelu_approx_tanh(name="gelu", input=self.pre, compute_data_type=dt.FLOAT)
        for t in (self.pre, self.out):
            t.set_output(True).set_data_type(dt.BFLOAT16)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([lib.heur_mode.FALLBACK])
        self.graph, self.index = g, -1
        self.names = [g.get_plan_name_at_index(i) for i in range(g.get_execution_plan_count())]

    def use(self, name: str) -> bool:
        """Builds the plan called name and runs that one from now on; False if cuDNN cannot."""
        if name not in self.names:
            return False
        try:
            self.graph.build_plan_at_index(self.names.index(name))
        except Exception:  # cudnn raises its own error types for plans it cannot build
            return False
        self.index = self.names.index(name)
        return True

    def __call__(self, out, pre, inp, weight, bias) -> None:
        workspace = scratch("cudnn_workspace", self.graph.get_workspace_size_plan_at_index(self.index))
        self.graph.execute_plan_at_index({self.inp: inp.data.ptr, self.weight: weight.data.ptr,
                                          self.bias: bias.data.ptr, self.pre: pre.data.ptr, self.out: out.data.ptr},
                                         workspace.data.ptr, self.index, handle=cudnn.handle())


def _choose(k: _Key, operands: tuple, with_cublaslt: Callable[[], None]) -> _Graph | None:
    """The cuDNN graph with its fastest plan, or None where cuBLASLt is faster (or cuDNN absent)."""
    if cudnn.module() is None:
        return None
    key = f"gelu_gemm {k.N}x{k.C}x{k.OC} cuDNN {cudnn.module().backend_version()}"
    choice = cached(key)
    if choice == [CUBLASLT]:  # no cuDNN graph to build
        return None
    try:
        graph = _Graph(k)
    except Exception:  # a shape or GPU cuDNN's runtime fusion does not take
        return None
    if isinstance(choice, list) and len(choice) == 1 and graph.use(choice[0]):
        return graph
    times = {CUBLASLT: time_ms(with_cublaslt, RUNS)}  # its first call also tunes its algorithm
    for name in graph.names:
        if graph.use(name):
            times[name] = time_ms(lambda: graph(*operands), RUNS)
    fastest = min(times, key=times.get)
    remember(key, [fastest])
    if fastest == CUBLASLT:
        return None
    graph.index = graph.names.index(fastest)  # built above
    return graph


_chosen: dict[_Key, _Graph | None] = {}


def gelu_gemm(out, pre, inp, weight, bias, with_cublaslt: Callable[[], None]) -> None:
    """out, pre (N, OC) from inp (N, C), weight (OC, C), bias (OC); with_cublaslt() computes the same
    through cuBLASLt. The first call of a shape chooses (eagerly: before any CUDA-graph capture)."""
    (N, C), OC = rows(inp), weight.shape[0]
    k = _Key(N, C, OC)
    if k not in _chosen:
        check(not current().stream.is_capturing(),
              "matmul_forward: the GELU GEMM must run once before a CUDA graph capture")
        _chosen[k] = _choose(k, (out, pre, inp, weight, bias), with_cublaslt)
    graph = _chosen[k]
    if graph is None:
        with_cublaslt()
    else:
        graph(out, pre, inp, weight, bias)

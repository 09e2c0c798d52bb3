"""Which FP8 GEMMs this GPU's cuBLASLt runs (python -m tests.bench.probe_fp8): at GPT-2's linear-layer shapes
(d12 and d48 at B*T = 16384, and a small test shape), the forward's E4M3 x E4M3 with and without its bias
and GELU epilogues and fast accumulation, and the backward's E5M2 x E4M3 input gradient (with dGELU) and
accumulating weight gradient. core/gpu/fp8.py takes the first of its ways that runs; this says which do.
CUBLASLT_LOG_LEVEL=1 (and CUBLASLT_LOG_FILE) make cuBLASLt say why one does not.
"""

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["256x128x384", "16384x768x2304", "16384x768x3072",
                                                    "16384x3072x768", "16384x1600x4800"],
                    help="MxKxN of the forward (rows x input channels x output channels)")
    args = ap.parse_args()

    import cupy as cp

    from llmc.core.errors import LlmcError
    from llmc.core.gpu import runtime

    runtime.init()
    from llmc.core.gpu.cublaslt import CUDA_R_8F_E4M3 as E4M3, CUDA_R_8F_E5M2 as E5M2, Epilogue, gemm

    bf16 = runtime.BF16
    for shape in args.shapes:
        M, K, N = map(int, shape.split("x"))
        x, w = cp.random.randint(0, 60, (M, K), dtype=cp.uint8), cp.random.randint(0, 60, (N, K), dtype=cp.uint8)
        g, w_t, x_t = (cp.random.randint(0, 60, s, dtype=cp.uint8) for s in ((M, N), (K, N), (K, M)))
        g_t = cp.random.randint(0, 60, (N, M), dtype=cp.uint8)
        out, pre, dinp, dw = cp.zeros((M, N), bf16), cp.zeros((M, N), bf16), cp.zeros((M, K), bf16), cp.zeros((N, K), bf16)
        bias, one, aux_in = cp.zeros(N, bf16), cp.ones(1, cp.float32), cp.zeros((M, K), bf16)
        fwd = dict(lda=K, ldb=K, ldd=N, trans_b=True, a_type=E4M3, b_type=E4M3, a_scale=one.data.ptr, b_scale=one.data.ptr)
        cases = {
            "bias+fast": lambda: gemm(out.data.ptr, x.data.ptr, w.data.ptr, M, N, K, **fwd, fast_accum=True,
                                      epilogue=Epilogue.BIAS, bias=bias.data.ptr),
            "bias": lambda: gemm(out.data.ptr, x.data.ptr, w.data.ptr, M, N, K, **fwd, epilogue=Epilogue.BIAS,
                                 bias=bias.data.ptr),
            "gelu+bias+fast": lambda: gemm(out.data.ptr, x.data.ptr, w.data.ptr, M, N, K, **fwd, fast_accum=True,
                                           epilogue=Epilogue.GELU_AUX_BIAS, bias=bias.data.ptr, aux=pre.data.ptr,
                                           aux_ld=N),
            "plain+fast": lambda: gemm(out.data.ptr, x.data.ptr, w.data.ptr, M, N, K, **fwd, fast_accum=True),
            "residual+fast": lambda: gemm(out.data.ptr, x.data.ptr, w.data.ptr, M, N, K, **fwd, fast_accum=True,
                                          beta=1.0, c=pre.data.ptr),
            "dinp e5m2+dgelu": lambda: gemm(dinp.data.ptr, g.data.ptr, w_t.data.ptr, M, K, N, lda=N, ldb=N, ldd=K,
                                            trans_b=True, a_type=E5M2, b_type=E4M3, a_scale=one.data.ptr,
                                            b_scale=one.data.ptr, epilogue=Epilogue.DGELU, aux=aux_in.data.ptr,
                                            aux_ld=K),
            "dweight e5m2 beta 1": lambda: gemm(dw.data.ptr, g_t.data.ptr, x_t.data.ptr, N, K, M, lda=M, ldb=M, ldd=K,
                                                trans_b=True, beta=1.0, a_type=E5M2, b_type=E4M3,
                                                a_scale=one.data.ptr, b_scale=one.data.ptr),
        }
        row = []
        for name, call in cases.items():
            try:
                call()
                cp.cuda.runtime.deviceSynchronize()
                row.append(f"{name} ok")
            except LlmcError:
                row.append(f"{name} NO")
        print(f"{M}x{K}x{N}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()

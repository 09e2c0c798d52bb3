// The residual add, 8 elements per thread.
#include "common.cuh"

extern "C" __global__ void residual_forward(bf16* out, const bf16* inp1, const bf16* inp2, long n8) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float a[PACK], b[PACK];
    load8_cs(a, inp1 + i * PACK);
    load8_cs(b, inp2 + i * PACK);
#pragma unroll
    for (int k = 0; k < PACK; k++) a[k] += b[k];
    store8(out + i * PACK, a);
}

// The residual add, one pack (PACK elements) per thread.
#include "common.cuh"

extern "C" __global__ void residual_forward(bf16* out, const bf16* inp1, const bf16* inp2, long packs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs) return;
    float a[PACK], b[PACK];
    load_bf16_cs(a, inp1 + i * PACK);
    load_bf16_cs(b, inp2 + i * PACK);
#pragma unroll
    for (int k = 0; k < PACK; k++) a[k] += b[k];
    store_bf16(out + i * PACK, a);
}

// GELU, tanh approximation (GPT-2's), forward and backward, one pack (PACK elements)
// per thread.
#include "common.cuh"

extern "C" __global__ void gelu_forward(bf16* out, const bf16* inp, long packs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs) return;
    float x[PACK];
    load_bf16_cs(x, inp + i * PACK);
#pragma unroll
    for (int k = 0; k < PACK; k++) x[k] = gelu_tanh(x[k]);
    store_bf16(out + i * PACK, x);
}

// dinp = gelu'(inp) * dout; dinp may be dout itself (each element is read before it is written)
extern "C" __global__ void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, long packs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs) return;
    float x[PACK], d[PACK];
    load_bf16_cs(x, inp + i * PACK);
    load_bf16(d, dout + i * PACK);
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float x2 = x[k] * x[k];
        float th = tanhf(GELU_SCALE * x[k] * (1.0f + GELU_CUBIC * x2));
        float dudx = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x2);
        d[k] *= 0.5f * (1.0f + th) + 0.5f * x[k] * (1.0f - th * th) * dudx;
    }
    store_bf16(dinp + i * PACK, d);
}

// Sum of squares of a flat bf16 array in fp32: per-block partials, then one block adds them in
// order (deterministic for a given grid).
#include "common.cuh"

extern "C" __global__ void norm_squared_partial(float* partial, const bf16* x, long n) {
    __shared__ float shared[32];
    float sum = 0.0f, v[PACK];
    long n8 = n / PACK;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (long)gridDim.x * blockDim.x) {
        load_bf16_cs(v, x + i * PACK);
#pragma unroll
        for (int k = 0; k < PACK; k++) sum += v[k] * v[k];
    }
    if (blockIdx.x == 0 && threadIdx.x < n - n8 * PACK) {
        float t = __bfloat162float(x[n8 * PACK + threadIdx.x]);
        sum += t * t;
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

extern "C" __global__ void norm_squared_finish(float* out, const float* partial, int blocks) {
    __shared__ float shared[32];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x) sum += partial[i];
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) out[0] = sum;
}

// The bias gradient of a matmul backward: dbias (OC) += dout (N, OC) summed over N, deterministically:
// part 1 gives fp32 partial sums per row slice, part 2 adds them up in order.
#include "common.cuh"

#define BIAS_WARPS 8
#define BIAS_COLS (WARP_SIZE * PACK)  // columns per block: 256

// block (32, BIAS_WARPS): lane -> 8 columns, warp -> rows; blockIdx.x column tile, blockIdx.y row slice
extern "C" __global__ void bias_backward_partial(float* partial, const bf16* dout, int N, int OC) {
    __shared__ float sums[BIAS_WARPS][BIAS_COLS];
    int c = blockIdx.x * BIAS_COLS + threadIdx.x * PACK;
    float acc[PACK] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, d[PACK];
    if (c < OC) {
        for (int n = blockIdx.y * BIAS_WARPS + threadIdx.y; n < N; n += gridDim.y * BIAS_WARPS) {
            load8(d, dout + (long)n * OC + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) acc[k] += d[k];
        }
    }
#pragma unroll
    for (int k = 0; k < PACK; k++) sums[threadIdx.y][threadIdx.x * PACK + k] = acc[k];
    __syncthreads();
    int t = threadIdx.y * WARP_SIZE + threadIdx.x;  // 0..255: one column each
    int col = blockIdx.x * BIAS_COLS + t;
    if (col < OC) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < BIAS_WARPS; w++) s += sums[w][t];
        partial[(long)blockIdx.y * OC + col] = s;
    }
}

// dbias += the slices' partials summed in order. Block (32, 8).
extern "C" __global__ void bias_backward_reduce(bf16* dbias, const float* partial, int slices, int OC) {
    float sum = column_sum(partial, slices, OC);
    int c = blockIdx.x * WARP_SIZE + threadIdx.x;
    if (threadIdx.y != 0 || c >= OC) return;
    dbias[c] = __float2bfloat16(__bfloat162float(dbias[c]) + sum);
}


// The bias gradient of a matmul backward: dbias (OC) += dout (N, OC) summed over N, deterministically:
// part 1 gives fp32 partial sums per row slice, part 2 adds them up in order. And the bias add of a
// forward whose operands cuBLASLt's bias epilogue does not take (matmul.py).
#include "common.cuh"

// out (N, OC) += bias (OC), one pack per thread (PACK divides OC: a pack never straddles two rows)
extern "C" __global__ void bias_forward(bf16* out, const bf16* bias, long packs, int OC) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= packs) return;
    float o[PACK], b[PACK];
    load_bf16(o, out + i * PACK);
    load_bf16(b, bias + (i * PACK) % OC);
#pragma unroll
    for (int k = 0; k < PACK; k++) o[k] += b[k];
    store_bf16(out + i * PACK, o);
}

#define BIAS_WARPS 8
#define BIAS_COLS (WARP_SIZE * PACK)  // columns per block: 256 at PACK 8

// block (32, BIAS_WARPS): lane -> PACK columns, warp -> rows; blockIdx.x column tile, blockIdx.y row slice
extern "C" __global__ void bias_backward_partial(float* partial, const bf16* dout, int N, int OC) {
    __shared__ float sums[BIAS_WARPS][BIAS_COLS];
    int c = blockIdx.x * BIAS_COLS + threadIdx.x * PACK;
    float acc[PACK] = {}, d[PACK];
    if (c < OC) {
        for (int n = blockIdx.y * BIAS_WARPS + threadIdx.y; n < N; n += gridDim.y * BIAS_WARPS) {
            load_bf16(d, dout + (long)n * OC + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) acc[k] += d[k];
        }
    }
#pragma unroll
    for (int k = 0; k < PACK; k++) sums[threadIdx.y][threadIdx.x * PACK + k] = acc[k];
    __syncthreads();
    int t = threadIdx.y * WARP_SIZE + threadIdx.x;  // 0..255: one column each (the first BIAS_COLS)
    int col = blockIdx.x * BIAS_COLS + t;
    if (t < BIAS_COLS && col < OC) {
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


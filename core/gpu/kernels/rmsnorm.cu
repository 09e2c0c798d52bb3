// RMSNorm (Llama) forward and backward. One warp per row of C channels, PACK channels per access (8: 128-bit;
// narrower where C or the pointers are not 16-byte aligned, kernels/common.cuh). layernorm.cu without the mean.
#include "common.cuh"

// packs per lane held in registers through the row: a row of C <= 8 * 32 * PACK (2048 at PACK 8, Llama 3.2
// 1B's) is read from memory once; longer rows re-read their other packs (from L1/L2)
#define RMS_CACHED 8

// out = inp * rstd * weight, rstd = 1 / sqrt(mean(inp^2) + eps), saved per row
extern "C" __global__ void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int N, int C,
                                           float eps) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    int lane = threadIdx.x % WARP_SIZE;
    const WarpRow<RMS_CACHED> row_packs(inp + (long)row * C, C, lane);
    float v[PACK];
    auto each_pack = [&](auto f) { row_packs.each_pack(v, f); };  // f(c) with v holding channels c..c+PACK-1
    float squares = 0.0f;
    each_pack([&](int c) {
#pragma unroll
        for (int k = 0; k < PACK; k++) squares += v[k] * v[k];
    });
    float s = rsqrtf(warp_sum(squares) / C + eps);
    bf16* o = out + (long)row * C;
    each_pack([&](int c) {
        float w[PACK], y[PACK];
        load_bf16(w, weight + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) y[k] = v[k] * s * w[k];
        store_bf16(o + c, y);
    });
    if (lane == 0) rstd[row] = s;
}

// blocks of 256 per SM the register budget allows (rmsnorm.py launches that many per SM): one, so that
// the row's packs stay in registers (faster at C = 2048 than 3 cached packs and two blocks: PERF.md)
#define RMS_MIN_BLOCKS 1

// Backward, part 1. With norm = inp * rstd: dinp += rstd * (weight * dout - norm * mean(weight * dout * norm))
// and dweight's partial sums of norm * dout. Each warp walks rows (stride: all warps of the grid) and
// accumulates its rows in order in its own slice of dynamic shared memory (C floats, channel c + k of a
// pack at [k * packs + c / PACK]: no bank conflicts); the block sums its warps in order into
// scratch[blockIdx.x] (C floats), part 2 the blocks in order. Deterministic throughout.
extern "C" __global__ void __launch_bounds__(256, RMS_MIN_BLOCKS)
rmsnorm_backward(bf16* __restrict__ dinp, float* __restrict__ scratch, const bf16* __restrict__ dout,
                 const bf16* __restrict__ inp, const bf16* __restrict__ weight, const float* __restrict__ rstd, int N,
                 int C) {
    extern __shared__ float acc[];  // (warps, C)
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    float* dw = acc + (long)warp * C;
    int packs = C / PACK;
    for (int c = lane; c < C; c += WARP_SIZE) dw[c] = 0.0f;
    __syncwarp();
    for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
        long off = (long)row * C;
        float s = rstd[row];
        pack_t graw[RMS_CACHED], xraw[RMS_CACHED], draw[RMS_CACHED];
#pragma unroll
        for (int i = 0; i < RMS_CACHED; i++) {  // every cached load of the row issued at once, dinp's too
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C) {
                graw[i] = load_raw_cs(dout + off + c);
                xraw[i] = load_raw_cs(inp + off + c);
                draw[i] = load_raw(dinp + off + c);
            }
        }
        auto each_pack = [&](auto f) {  // f(c, g, x, d) over the lane's packs of the row
#pragma unroll
            for (int i = 0; i < RMS_CACHED; i++) {
                int c = (i * WARP_SIZE + lane) * PACK;
                if (c < C) f(c, graw[i], xraw[i], draw[i]);
            }
            for (int c = (RMS_CACHED * WARP_SIZE + lane) * PACK; c < C; c += WARP_SIZE * PACK)
                f(c, load_raw(dout + off + c), load_raw(inp + off + c), load_raw(dinp + off + c));
        };
        float dnorm_norm_sum = 0.0f;
        each_pack([&](int c, pack_t graw, pack_t xraw, pack_t) {
            float g[PACK], x[PACK], w[PACK];
            unpack_bf16(g, graw);
            unpack_bf16(x, xraw);
            load_bf16(w, weight + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) {
                float norm = x[k] * s;
                dnorm_norm_sum += w[k] * g[k] * norm;
                dw[k * packs + c / PACK] += norm * g[k];
            }
        });
        float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / C;
        each_pack([&](int c, pack_t graw, pack_t xraw, pack_t draw) {
            float g[PACK], x[PACK], w[PACK], d[PACK];
            unpack_bf16(g, graw);
            unpack_bf16(x, xraw);
            unpack_bf16(d, draw);
            load_bf16(w, weight + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) d[k] += (w[k] * g[k] - x[k] * s * dnorm_norm_mean) * s;
            store_bf16(dinp + off + c, d);
        });
    }
    __syncthreads();
    // block total of each channel, walking the interleaved slots in order (conflict-free reads)
    float* out = scratch + (long)blockIdx.x * C;
    for (int slot = threadIdx.x; slot < C; slot += blockDim.x) {
        int ch = (slot % packs) * PACK + slot / packs;
        float sum = 0.0f;
        for (int i = 0; i < warps; i++) sum += acc[(long)i * C + slot];
        out[ch] = sum;
    }
}

// Backward, part 2: dweight += the blocks' partials summed in order. Block (32, 8).
extern "C" __global__ void rmsnorm_backward_reduce(bf16* dweight, const float* scratch, int blocks, int C) {
    float sum = column_sum(scratch, blocks, C);
    int c = blockIdx.x * WARP_SIZE + threadIdx.x;
    if (threadIdx.y != 0 || c >= C) return;
    dweight[c] = __float2bfloat16(__bfloat162float(dweight[c]) + sum);
}

// LayerNorm forward and backward. One warp per row of C channels, PACK channels per access (8: 128-bit;
// narrower where C or the pointers are not 16-byte aligned, kernels/common.cuh).
#include "common.cuh"

#define LN_EPS 1e-5f

// packs per lane held in registers through the row: a row of C <= 3 * 32 * PACK (768) is read from memory
// once, and all its loads are in flight together (longer rows re-read their other packs from L1/L2)
#define LN_FWD_CACHED 3

extern "C" __global__ void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp,
                                             const bf16* weight, const bf16* bias, int N, int C) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    int lane = threadIdx.x % WARP_SIZE;
    const WarpRow<LN_FWD_CACHED> row_packs(inp + (long)row * C, C, lane);
    float v[PACK];
    auto each_pack = [&](auto f) { row_packs.each_pack(v, f); };  // f(c) with v holding channels c..c+PACK-1
    float sum = 0.0f, var = 0.0f;
    each_pack([&](int c) {
#pragma unroll
        for (int k = 0; k < PACK; k++) sum += v[k];
    });
    float m = warp_sum(sum) / C;
    each_pack([&](int c) {
#pragma unroll
        for (int k = 0; k < PACK; k++) var += (v[k] - m) * (v[k] - m);
    });
    float s = rsqrtf(warp_sum(var) / C + LN_EPS);
    bf16* o = out + (long)row * C;
    each_pack([&](int c) {
        float w[PACK], b[PACK], y[PACK];
        load_bf16(w, weight + c);
        load_bf16(b, bias + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) y[k] = (v[k] - m) * s * w[k] + b[k];
        store_bf16(o + c, y);
    });
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// Backward, one pack of a row: pass 1 accumulates the warp's dweight/dbias slices and
// the row sums, pass 2 adds the input gradient into dinp (and, given ds, the stored sums into the
// warp's slice of dinp's column sums).
__device__ __forceinline__ void ln_backward_pass1(pack_t graw, pack_t xraw, const bf16* weight, int c, int packs,
                                                  float m, float s, float* dw, float* db, float& dnorm_sum,
                                                  float& dnorm_norm_sum) {
    float g[PACK], x[PACK], w[PACK];
    unpack_bf16(g, graw);
    unpack_bf16(x, xraw);
    load_bf16(w, weight + c);
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float norm = (x[k] - m) * s;
        float dnorm = w[k] * g[k];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * norm;
        dw[k * packs + c / PACK] += norm * g[k];  // channel c + k lives at [k * packs + c / PACK]: no bank conflicts
        db[k * packs + c / PACK] += g[k];
    }
}

__device__ __forceinline__ void ln_backward_pass2(bf16* dinp, pack_t graw, pack_t xraw, pack_t draw, const bf16* weight,
                                                  int c, int packs, float m, float s, float dnorm_mean,
                                                  float dnorm_norm_mean, float* ds) {
    float g[PACK], x[PACK], w[PACK], d[PACK];
    unpack_bf16(g, graw);
    unpack_bf16(x, xraw);
    unpack_bf16(d, draw);
    load_bf16(w, weight + c);
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float norm = (x[k] - m) * s;
        d[k] += (w[k] * g[k] - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
    store_bf16(dinp + c, d);
    if (ds) {
#pragma unroll
        for (int k = 0; k < PACK; k++) ds[k * packs + c / PACK] += __bfloat162float(__float2bfloat16(d[k]));
    }
}

// packs per lane held in registers through the row (dout, inp and dinp): C = 768 read once at PACK 8;
// channels past 3 * 32 * PACK are re-read (from L1/L2)
#define LN_CACHED 3
// blocks of 256 per SM the register budget allows (layernorm.py launches that many per SM): 2 keeps
// the cached packs in registers without spilling (PERF.md, "From the code's comments")
#define LN_MIN_BLOCKS 2

// Backward, part 1. Each warp walks rows (stride: all warps of the grid): dinp += the row's input
// gradient, and the warp's own slice of dynamic shared memory (sums*C floats: dweight, dbias and,
// with sums 3, the updated dinp's column sums, channel-interleaved) accumulates its rows in order.
// The block then sums its warps in order into scratch[blockIdx.x] (sums*C floats); part 2 sums the
// blocks in order. Deterministic throughout.
extern "C" __global__ void __launch_bounds__(256, LN_MIN_BLOCKS)
layernorm_backward(bf16* dinp, float* scratch, const bf16* dout, const bf16* inp, const bf16* weight,
                   const float* mean, const float* rstd, int N, int C, int sums) {
    extern __shared__ float acc[];  // (warps, sums*C)
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    float* dw = acc + (long)warp * sums * C;
    float* db = dw + C;
    float* ds = sums == 3 ? db + C : nullptr;
    int packs = C / PACK;
    for (int c = lane; c < sums * C; c += WARP_SIZE) dw[c] = 0.0f;
    __syncwarp();
    const int rest = (LN_CACHED * WARP_SIZE + lane) * PACK;  // first channel past the cached packs
    for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
        long off = (long)row * C;
        float m = mean[row], s = rstd[row];
        float dnorm_sum = 0.0f, dnorm_norm_sum = 0.0f;
        pack_t graw[LN_CACHED], xraw[LN_CACHED], draw[LN_CACHED];
#pragma unroll
        for (int i = 0; i < LN_CACHED; i++) {  // every load of the row issued at once: one memory round trip
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C) {
                graw[i] = load_raw_cs(dout + off + c);
                xraw[i] = load_raw_cs(inp + off + c);
                draw[i] = load_raw(dinp + off + c);
            }
        }
#pragma unroll
        for (int i = 0; i < LN_CACHED; i++) {
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C) ln_backward_pass1(graw[i], xraw[i], weight, c, packs, m, s, dw, db, dnorm_sum, dnorm_norm_sum);
        }
        for (int c = rest; c < C; c += WARP_SIZE * PACK)
            ln_backward_pass1(load_raw(dout + off + c), load_raw(inp + off + c), weight, c, packs, m, s, dw, db,
                              dnorm_sum, dnorm_norm_sum);
        float dnorm_mean = warp_sum(dnorm_sum) / C;
        float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / C;
#pragma unroll
        for (int i = 0; i < LN_CACHED; i++) {
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C)
                ln_backward_pass2(dinp + off, graw[i], xraw[i], draw[i], weight, c, packs, m, s, dnorm_mean,
                                  dnorm_norm_mean, ds);
        }
        for (int c = rest; c < C; c += WARP_SIZE * PACK)
            ln_backward_pass2(dinp + off, load_raw(dout + off + c), load_raw(inp + off + c), load_raw(dinp + off + c),
                              weight, c, packs, m, s, dnorm_mean, dnorm_norm_mean, ds);
    }
    __syncthreads();
    // block total of each channel, walking the interleaved slots in order (conflict-free reads)
    float* out = scratch + (long)blockIdx.x * sums * C;
    for (int slot = threadIdx.x; slot < sums * C; slot += blockDim.x) {
        int part = slot / C, within = slot % C, ch = (within % packs) * PACK + within / packs;
        float sum = 0.0f;
        for (int i = 0; i < warps; i++) sum += acc[(long)i * sums * C + slot];
        out[part * C + ch] = sum;
    }
}

// Backward, part 2: dweight += the blocks' partials summed in order, dbias and dsum (with sums 3)
// likewise. Block (32, 8).
extern "C" __global__ void layernorm_backward_reduce(bf16* dweight, bf16* dbias, bf16* dsum, const float* scratch,
                                                     int blocks, int C, int sums) {
    float sum = column_sum(scratch, blocks, sums * C);
    int c = blockIdx.x * WARP_SIZE + threadIdx.x;
    if (threadIdx.y != 0 || c >= sums * C) return;
    bf16* dst = c < C ? dweight + c : c < 2 * C ? dbias + (c - C) : dsum + (c - 2 * C);
    *dst = __float2bfloat16(__bfloat162float(*dst) + sum);
}

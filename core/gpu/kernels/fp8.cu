// FP8 with per-tensor current scaling (primitives.quantize_fp8): the amax of a bf16 tensor (or of its GELU) as
// per-block partials, then one pass over the tensor that reduces them, scales by FMT_MAX / amax and writes the
// FP8 bits row-major and/or transposed (the weight gradient's GEMM wants its operands token-major: cuBLASLt's
// FP8 kernels on Hopper take only A transposed and B not, "TN").
#include "common.cuh"
#include <cuda_fp8.h>

#define AMAX_FLOOR 1e-12f  // primitives.AMAX_FLOOR
#define TILE 64            // the cast's tile: TILE rows x TILE columns, 256 threads, 2 packs of 8 a thread
#define TILE_PACKS (TILE / 8)

// the tensor cast: x itself, or (GELU) gelu(x), the fc layer's output before its GELU (primitives.quantize_fp8)
template <bool GELU>
__device__ __forceinline__ float cast_input(float x) { return GELU ? gelu_tanh(x) : x; }

// partial[blockIdx.x] = max |x| over the block's grid-stride share of the tensor's packs (NaN ignored, as
// fmaxf does: a NaN still reaches the FP8 data, and the loss)
template <bool GELU>
__device__ __forceinline__ void amax_partial(float* partial, const bf16* inp, long packs) {
    __shared__ float shared[WARP_SIZE];
    float m = 0.0f, x[PACK];
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += (long)gridDim.x * blockDim.x) {
        load_bf16(x, inp + i * PACK);
#pragma unroll
        for (int k = 0; k < PACK; k++) m = fmaxf(m, fabsf(cast_input<GELU>(x[k])));
    }
    m = block_max(m, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = m;
}

extern "C" __global__ void amax_partial_plain(float* partial, const bf16* inp, long packs) {
    amax_partial<false>(partial, inp, packs);
}

extern "C" __global__ void amax_partial_gelu(float* partial, const bf16* inp, long packs) {
    amax_partial<true>(partial, inp, packs);
}

template <__nv_fp8_interpretation_t FMT>
__device__ __forceinline__ float fmt_max() { return FMT == __NV_E4M3 ? 448.0f : 57344.0f; }

// out (R, K) and/or out_t (K, R) = fp8(inp (R, K) * scale), scale = FMT_MAX / max(amax, AMAX_FLOOR) with amax
// the max of `parts` partials; scale_inv = 1 / scale. Requires K and R multiples of 8 (whole packs of 8 bf16
// and 8-byte stores of the transpose) and 16-byte aligned pointers. Grid (K / TILE, R / TILE) rounded up.
template <__nv_fp8_interpretation_t FMT, bool GELU>
__device__ __forceinline__ void cast_transpose(unsigned char* out, unsigned char* out_t, float* scale_inv,
                                               const bf16* inp, const float* partial, int parts, int R, int K) {
    static_assert(PACK == 8, "the cast moves packs of 8 (launched at pack 8 only)");
    __shared__ float shared[WARP_SIZE];
    __shared__ __align__(16) unsigned char tile[TILE][TILE + 8];  // the tile's FP8 bytes, row-major (+8: fewer bank conflicts)
    // the tile's packs are loaded first, so their reads are in flight while the block reduces the partials
    const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    pack_t raw[2];
    bool inside[2];
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int r = threadIdx.x / TILE_PACKS + half * (256 / TILE_PACKS), c = (threadIdx.x % TILE_PACKS) * 8;
        inside[half] = r0 + r < R && c0 + c < K;
        if (inside[half]) raw[half] = load_raw_cs(inp + (long)(r0 + r) * K + c0 + c);
    }
    float amax = 0.0f;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) amax = fmaxf(amax, partial[i]);
    amax = fmaxf(block_max(amax, shared), AMAX_FLOOR);
    const float scale = fmt_max<FMT>() / amax;
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *scale_inv = 1.0f / scale;

#pragma unroll
    for (int half = 0; half < 2; half++) {
        int r = threadIdx.x / TILE_PACKS + half * (256 / TILE_PACKS), c = (threadIdx.x % TILE_PACKS) * 8;
        if (!inside[half]) continue;
        float x[PACK];
        unpack_bf16(x, raw[half]);
        uint2 bits;
        unsigned short* pairs = reinterpret_cast<unsigned short*>(&bits);
#pragma unroll
        for (int k = 0; k < 4; k++)
            pairs[k] = __nv_cvt_float2_to_fp8x2(make_float2(cast_input<GELU>(x[2 * k]) * scale,
                                                            cast_input<GELU>(x[2 * k + 1]) * scale), __NV_SATFINITE, FMT);
        if (out) *reinterpret_cast<uint2*>(out + (long)(r0 + r) * K + c0 + c) = bits;
        if (out_t) *reinterpret_cast<uint2*>(&tile[r][c]) = bits;
    }
    if (!out_t) return;
    __syncthreads();
    // out_t's row c0 + c holds the tile's column c: 8 bytes (rows r..r+7) a store
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int c = threadIdx.x / TILE_PACKS + half * (256 / TILE_PACKS), r = (threadIdx.x % TILE_PACKS) * 8;
        if (r0 + r >= R || c0 + c >= K) continue;
        uint2 bits;
        unsigned char* b = reinterpret_cast<unsigned char*>(&bits);
#pragma unroll
        for (int k = 0; k < 8; k++) b[k] = tile[r + k][c];
        *reinterpret_cast<uint2*>(out_t + (long)(c0 + c) * R + r0 + r) = bits;
    }
}

extern "C" __global__ void cast_transpose_e4m3(unsigned char* out, unsigned char* out_t, float* scale_inv,
                                               const bf16* inp, const float* partial, int parts, int R, int K) {
    cast_transpose<__NV_E4M3, false>(out, out_t, scale_inv, inp, partial, parts, R, K);
}

extern "C" __global__ void cast_transpose_e4m3_gelu(unsigned char* out, unsigned char* out_t, float* scale_inv,
                                                    const bf16* inp, const float* partial, int parts, int R, int K) {
    cast_transpose<__NV_E4M3, true>(out, out_t, scale_inv, inp, partial, parts, R, K);
}

extern "C" __global__ void cast_transpose_e5m2(unsigned char* out, unsigned char* out_t, float* scale_inv,
                                               const bf16* inp, const float* partial, int parts, int R, int K) {
    cast_transpose<__NV_E5M2, false>(out, out_t, scale_inv, inp, partial, parts, R, K);
}

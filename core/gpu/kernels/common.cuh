// Shared helpers for llmc's bf16 kernels: packs of PACK bf16 moved in one access, warp/block reductions.
// Inlined into every kernel file by llmc.core.gpu.runtime (so the kernel cache sees its text).
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define WARP_SIZE 32
#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)

// bf16 per vector access: 8 (128-bit), the width every aligned shape takes. runtime.launch compiles a
// file again with -DPACK=4, 2 or 1 for a launch whose rows or pointers are not 16-byte aligned (an odd
// channel count, a per-layer view at an odd offset): the same kernels, on narrower accesses.
#ifndef PACK
#define PACK 8
#endif
static_assert(PACK == 8 || PACK == 4 || PACK == 2 || PACK == 1, "PACK is 8, 4, 2 or 1 bf16");

// the register one pack travels in (PACK * 2 bytes)
template <int N> struct PackBits;
template <> struct PackBits<8> { typedef uint4 type; };
template <> struct PackBits<4> { typedef uint2 type; };
template <> struct PackBits<2> { typedef unsigned int type; };
template <> struct PackBits<1> { typedef unsigned short type; };
typedef PackBits<PACK>::type pack_t;

// one pack's raw bits (aligned to its size), cached or streamed (data read exactly once: kept out of
// the way in L1/L2)
__device__ __forceinline__ pack_t load_raw(const bf16* p) { return *reinterpret_cast<const pack_t*>(p); }
__device__ __forceinline__ pack_t load_raw_cs(const bf16* p) { return __ldcs(reinterpret_cast<const pack_t*>(p)); }

// widen the PACK bf16 held in one register to fp32
__device__ __forceinline__ void unpack_bf16(float (&out)[PACK], pack_t raw) {
    if constexpr (PACK == 1) {
        out[0] = __bfloat162float(*reinterpret_cast<const bf16*>(&raw));
    } else {
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < PACK / 2; i++) {
            float2 f = __bfloat1622float2(h[i]);
            out[2 * i] = f.x;
            out[2 * i + 1] = f.y;
        }
    }
}

// load a pack as fp32
__device__ __forceinline__ void load_bf16(float (&out)[PACK], const bf16* p) { unpack_bf16(out, load_raw(p)); }
__device__ __forceinline__ void load_bf16_cs(float (&out)[PACK], const bf16* p) { unpack_bf16(out, load_raw_cs(p)); }

// round PACK fp32 to bf16 (nearest even) in one register
__device__ __forceinline__ pack_t pack_bf16(const float (&in)[PACK]) {
    pack_t raw;
    if constexpr (PACK == 1) {
        *reinterpret_cast<bf16*>(&raw) = __float2bfloat16(in[0]);
    } else {
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < PACK / 2; i++) h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
    }
    return raw;
}

// round PACK fp32 to bf16 and store them in one access
__device__ __forceinline__ void store_bf16(bf16* p, const float (&in)[PACK]) {
    *reinterpret_cast<pack_t*>(p) = pack_bf16(in);
}

// 16-byte asynchronous copies global -> shared (sm_80+), in commit groups
__device__ __forceinline__ void copy_async16(void* shared, const void* global) {
    unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_all_but_latest() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 floats; the call is a barrier.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* shared) {
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : NEG_INF;
    return warp_max(v);
}

// A lane's packs of one row of C channels (a warp per row): the first CACHED are loaded together when the
// row is taken (all in flight; streaming loads, nothing else reads the row) and kept in registers; packs
// past them are loaded each time they are visited (from L1/L2 after the first pass).
template <int CACHED>
struct WarpRow {
    const bf16* x;
    int C, lane;
    pack_t raw[CACHED];

    __device__ __forceinline__ WarpRow(const bf16* x, int C, int lane) : x(x), C(C), lane(lane) {
#pragma unroll
        for (int i = 0; i < CACHED; i++) {
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C) raw[i] = load_raw_cs(x + c);
        }
    }

    // f(c) for each of the lane's packs in order, with v holding channels c..c+PACK-1
    template <typename F>
    __device__ __forceinline__ void each_pack(float (&v)[PACK], F f) const {
#pragma unroll
        for (int i = 0; i < CACHED; i++) {
            int c = (i * WARP_SIZE + lane) * PACK;
            if (c < C) {
                unpack_bf16(v, raw[i]);
                f(c);
            }
        }
        for (int c = (CACHED * WARP_SIZE + lane) * PACK; c < C; c += WARP_SIZE * PACK) {
            load_bf16(v, x + c);
            f(c);
        }
    }
};

// Column sums of fp32 partials: returns sum over i < slices of partial[i * cols + col] for
// col = blockIdx.x * 32 + threadIdx.x, in a fixed order. Block (32, 8): threadIdx.y strides the
// slices, then the 8 subtotals are added in order. Valid in threadIdx.y == 0 (col < cols).
__device__ __forceinline__ float column_sum(const float* partial, int slices, int cols) {
    __shared__ float sub[8][WARP_SIZE];
    int col = blockIdx.x * WARP_SIZE + threadIdx.x;
    float s = 0.0f;
    if (col < cols)
#pragma unroll 8
        for (int i = threadIdx.y; i < slices; i += 8) s += partial[(long)i * cols + col];  // 8 loads in flight
    sub[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    s = 0.0f;
    if (threadIdx.y == 0)
#pragma unroll
        for (int y = 0; y < 8; y++) s += sub[y][threadIdx.x];
    return s;
}

// GPT-2's GELU, tanh approximation (core/config.py's GELU_SCALE, GELU_CUBIC): gelu.cu, and fp8.cu's cast of the
// fc layer's output before it
#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)
#define GELU_CUBIC 0.044715f
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + GELU_CUBIC * x * x * x)));
}

// 32-bit integer hash (a murmur3-style finalizer over position and seed): the random bits of
// stochastic rounding, a pure function of (index, seed) so results never depend on the launch shape
__device__ __forceinline__ unsigned int hash_u32(unsigned int x, unsigned int seed) {
    x ^= seed * 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    x += seed;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 12;
    return x;
}

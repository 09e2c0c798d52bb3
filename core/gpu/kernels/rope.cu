// Rotary position embedding (Llama) of the query and key heads of a qkv row laid out as attention's:
// (NH + 2 NKV) heads of HS channels, queries, then keys, then values; the value heads are copied.
// Channel pair (2i, 2i+1) of a head at position t turns by freqs_cis[t, i] = (cos, sin) (fp32): forward
// (x0 cos - x1 sin, x0 sin + x1 cos), backward the transpose (the same with -sin). One thread per pack of
// PACK channels; rope.py takes PACK dividing HS, so a pack stays within one head and, at PACK >= 2, holds
// whole pairs (HS is even); at PACK 1 a pair's even thread does both. Each pair is read before it is
// written by the same thread: out may be inp (rope_backward in place).
#include "common.cuh"

__device__ __forceinline__ void rope(bf16* out, const bf16* inp, const float* freqs_cis, long N, int T, int row,
                                     int rotated, int HS, float direction) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int packs = row / PACK;
    if (i >= N * packs) return;
    long n = i / packs;
    int c = (int)(i % packs) * PACK;
    long off = n * row + c;
    float x[PACK];
    load_bf16_cs(x, inp + off);
    if (c < rotated) {  // a query or key head; values fall through as a copy
        int t = n % T, d = c % HS;
        const float2* f = reinterpret_cast<const float2*>(freqs_cis) + (long)t * (HS / 2) + d / 2;
        if constexpr (PACK == 1) {  // the pair's even thread turns both channels (dinp may be dout itself)
            if (d % 2) return;
            float2 cs = *f;
            float x1 = __bfloat162float(inp[off + 1]), s = direction * cs.y;
            out[off + 1] = __float2bfloat16(x[0] * s + x1 * cs.x);
            x[0] = x[0] * cs.x - x1 * s;
        } else {
#pragma unroll
            for (int k = 0; k < PACK; k += 2) {
                float2 cs = f[k / 2];
                float s = direction * cs.y, x0 = x[k], x1 = x[k + 1];
                x[k] = x0 * cs.x - x1 * s;
                x[k + 1] = x0 * s + x1 * cs.x;
            }
        }
    }
    store_bf16(out + off, x);
}

extern "C" __global__ void rope_forward(bf16* out, const bf16* inp, const float* freqs_cis, long N, int T, int row,
                                        int rotated, int HS) {
    rope(out, inp, freqs_cis, N, T, row, rotated, HS, 1.0f);
}

extern "C" __global__ void rope_backward(bf16* dinp, const bf16* dout, const float* freqs_cis, long N, int T, int row,
                                         int rotated, int HS) {
    rope(dinp, dout, freqs_cis, N, T, row, rotated, HS, -1.0f);
}

// SwiGLU (Llama's MLP non-linearity) over llm.c's fused layout: inp (N, 2H) holds c_fc's output x1 and
// c_fc2's x2 side by side, out (N, H) = x1 * silu(x2). One thread per pack of PACK output channels.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// this thread's pack: row n, channels c..c+PACK-1 of H; false for the threads past the last pack
__device__ __forceinline__ bool pack_of_thread(long N, int H, long& n, int& c) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int packs = H / PACK;
    if (i >= N * packs) return false;
    n = i / packs;
    c = (int)(i % packs) * PACK;
    return true;
}

extern "C" __global__ void swiglu_forward(bf16* out, const bf16* inp, long N, int H) {
    long n;
    int c;
    if (!pack_of_thread(N, H, n, c)) return;
    const bf16* x = inp + n * 2 * H + c;
    float x1[PACK], x2[PACK];
    load_bf16_cs(x1, x);
    load_bf16_cs(x2, x + H);
#pragma unroll
    for (int k = 0; k < PACK; k++) x1[k] *= x2[k] * sigmoid(x2[k]);
    store_bf16(out + n * H + c, x1);
}

// dinp[:, :H] = dout * silu(x2), dinp[:, H:] = dout * x1 * silu'(x2), silu'(x) = sig(x) (1 + x (1 - sig(x)))
extern "C" __global__ void swiglu_backward(bf16* dinp, const bf16* inp, const bf16* dout, long N, int H) {
    long n;
    int c;
    if (!pack_of_thread(N, H, n, c)) return;
    const bf16* x = inp + n * 2 * H + c;
    float x1[PACK], x2[PACK], d[PACK], d1[PACK], d2[PACK];
    load_bf16_cs(x1, x);
    load_bf16_cs(x2, x + H);
    load_bf16_cs(d, dout + n * H + c);
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float sig = sigmoid(x2[k]);
        d1[k] = d[k] * x2[k] * sig;
        d2[k] = d[k] * x1[k] * sig * (1.0f + x2[k] * (1.0f - sig));
    }
    bf16* dx = dinp + n * 2 * H + c;
    store_bf16(dx, d1);
    store_bf16(dx + H, d2);
}

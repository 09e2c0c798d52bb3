// The fused classifier: per row of logits (Vp), loss = logsumexp(logits[:V]) - logits[target]
// and, when write_grad, the row overwritten in place by (softmax - onehot(target)) * dloss with
// the padded columns [V, Vp) zeroed. Probabilities are never stored: one pass for the running
// max/sum, one pass to write the gradient (its reads mostly hit L2: a variant holding the row in
// registers to read it once measured no faster on an H100). One block per row, 8 logits per
// 128-bit access.
#include "common.cuh"

// merge running (max, sum of exp(x - max)) pairs
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    s = (m == NEG_INF ? 0.0f : s * __expf(m - mn)) + (m2 == NEG_INF ? 0.0f : s2 * __expf(m2 - mn));
    m = mn;
}

// the row's (max, sum) over the block: a barrier; every thread gets the result
__device__ __forceinline__ void block_softmax_stats(float& m, float& s) {
    __shared__ float shared_m[32], shared_s[32];
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        softmax_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    m = NEG_INF;
    s = 0.0f;
    for (int w = 0; w < warps; w++) softmax_merge(m, s, shared_m[w], shared_s[w]);  // same order everywhere
}

// (max, sum of exp) of the entries c..c+7 below V, merged into (m, s)
__device__ __forceinline__ void pack_softmax_stats(float& m, float& s, const float (&v)[PACK], int c, int V) {
    float vm = NEG_INF;
#pragma unroll
    for (int k = 0; k < PACK; k++) if (c + k < V) vm = fmaxf(vm, v[k]);
    float vs = 0.0f;
#pragma unroll
    for (int k = 0; k < PACK; k++) if (c + k < V) vs += __expf(v[k] - vm);
    softmax_merge(m, s, vm, vs);
}

__device__ __forceinline__ void pack_dlogits(float (&g)[PACK], const float (&v)[PACK], int c, int V, int target,
                                             float m, float inv, float dloss) {
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float p = __expf(v[k] - m) * inv;
        g[k] = c + k < V ? (p - (c + k == target ? 1.0f : 0.0f)) * dloss : 0.0f;
    }
}

extern "C" __global__ void softmax_crossentropy(float* losses, bf16* logits, const int* targets,
                                                int V, int Vp, float dloss, int write_grad) {
    bf16* x = logits + (long)blockIdx.x * Vp;
    float m = NEG_INF, s = 0.0f, v[PACK];
    for (int c = threadIdx.x * PACK; c < V; c += blockDim.x * PACK) {
        load8(v, x + c);
        pack_softmax_stats(m, s, v, c, V);
    }
    block_softmax_stats(m, s);
    int target = targets[blockIdx.x];
    bool valid = target >= 0 && target < V;
    if (threadIdx.x == 0)
        losses[blockIdx.x] = valid ? m + logf(s) - __bfloat162float(x[target]) : QNAN;
    if (!write_grad) return;
    __syncthreads();  // x[target] is read above before any thread overwrites it
    float inv = 1.0f / s, g[PACK];
    for (int c = threadIdx.x * PACK; c < Vp; c += blockDim.x * PACK) {
        load8(v, x + c);
        pack_dlogits(g, v, c, V, target, m, inv, dloss);
        store8(x + c, g);
    }
}

// The fused classifier: per row of logits (Vp), loss = logsumexp(logits[:V]) - logits[target]
// and, when write_grad, the row overwritten in place by (softmax - onehot(target)) * dloss with
// the padded columns [V, Vp) zeroed. Probabilities are never stored: one pass for the running
// max/sum, one pass to write the gradient. One block per row, 8 logits per 128-bit access.
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

__device__ __forceinline__ void pack_dlogits(float (&g)[PACK], const float (&v)[PACK], int c, int V, int target,
                                             float m, float inv, float dloss) {
#pragma unroll
    for (int k = 0; k < PACK; k++) {
        float p = __expf(v[k] - m) * inv;
        g[k] = c + k < V ? (p - (c + k == target ? 1.0f : 0.0f)) * dloss : 0.0f;
    }
}

__device__ __forceinline__ float pack_max(const float (&v)[PACK], int c, int V) {
    float vm = NEG_INF;
#pragma unroll
    for (int k = 0; k < PACK; k++) if (c + k < V) vm = fmaxf(vm, v[k]);
    return vm;
}

__device__ __forceinline__ float pack_exp_sum(const float (&v)[PACK], int c, int V, float m) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < PACK; k++) if (c + k < V) s += __expf(v[k] - m);
    return s;
}

// With `cached` (dynamic shared memory of Vp bf16, training only) the row crosses DRAM once each
// way: pass 1 streams it into shared memory taking only the max (every load in flight, no exp),
// pass 2 sums exp(x - max) from shared memory, pass 3 writes the gradient. (Re-reading the row
// from global memory missed L2 on an H100, ~500 rows of 100 KB being in flight: 6.6 ms at B=64,
// 89% of DRAM bandwidth for 1.5x the traffic.) Without it, the first pass keeps a running
// (max, sum) and the gradient pass re-reads global memory.
extern "C" __global__ void __launch_bounds__(1024, 2)
softmax_crossentropy(float* losses, bf16* logits, const int* targets, int V, int Vp, float dloss, int write_grad,
                     int cached) {
    extern __shared__ uint4 row[];  // (Vp / 8) packs when cached
    __shared__ float shared[32];
    bf16* x = logits + (long)blockIdx.x * Vp;
    const uint4* xp = reinterpret_cast<const uint4*>(x);
    int packs = Vp / PACK, packs_v = (V + PACK - 1) / PACK;
    float m = NEG_INF, s = 0.0f, v[PACK];
    if (cached) {
#pragma unroll 4
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
            uint4 raw = __ldcs(xp + p);
            row[p] = raw;
            unpack8(v, raw);
            m = fmaxf(m, pack_max(v, p * PACK, V));
        }
        m = block_max(m, shared);
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
            unpack8(v, row[p]);  // this thread's own packs: no barrier needed
            s += pack_exp_sum(v, p * PACK, V, m);
        }
        s = block_sum(s, shared);
    } else {
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
            load8(v, x + p * PACK);
            float vm = pack_max(v, p * PACK, V);
            softmax_merge(m, s, vm, pack_exp_sum(v, p * PACK, V, vm));
        }
        block_softmax_stats(m, s);
    }
    int target = targets[blockIdx.x];
    bool valid = target >= 0 && target < V;
    if (threadIdx.x == 0) {
        float xt = valid ? __bfloat162float(cached ? reinterpret_cast<const bf16*>(row)[target] : x[target]) : 0.0f;
        losses[blockIdx.x] = valid ? m + logf(s) - xt : QNAN;
    }
    if (!write_grad) return;
    __syncthreads();  // x[target] is read above before any thread overwrites it
    float inv = 1.0f / s, g[PACK];
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
        uint4 raw = p >= packs_v ? make_uint4(0, 0, 0, 0) : cached ? row[p] : xp[p];
        unpack8(v, raw);
        pack_dlogits(g, v, p * PACK, V, target, m, inv, dloss);
        uint4 out;
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
        for (int i = 0; i < PACK / 2; i++) h[i] = __floats2bfloat162_rn(g[2 * i], g[2 * i + 1]);
        __stcs(reinterpret_cast<uint4*>(x) + p, out);  // streamed: the GEMMs read dlogits much later
    }
}

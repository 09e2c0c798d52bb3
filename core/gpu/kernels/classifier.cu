// The fused classifier: per row of logits (Vp), loss = logsumexp(logits[:V]) - logits[target]
// and, in training, the row overwritten in place by (softmax - onehot(target)) * dloss with the
// padded columns [V, Vp) zeroed. Probabilities are never stored. PACK logits per access (8: 128-bit).
#include "common.cuh"
#include <cuda_fp16.h>

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

__device__ __forceinline__ void store_dlogits(bf16* x, int p, const float (&v)[PACK], int V, int target, float m,
                                              float inv, float dloss) {
    float g[PACK];
    pack_dlogits(g, v, p * PACK, V, target, m, inv, dloss);
    __stcs(reinterpret_cast<pack_t*>(x) + p, pack_bf16(g));  // streamed: the GEMMs read dlogits much later
}

// -log softmax(row)[target] from the row's (max, sum of exp); NaN for a target outside [0, V)
__device__ __forceinline__ float row_loss(float m, float s, int target, int V, const bf16* row) {
    return target >= 0 && target < V ? m + logf(s) - __bfloat162float(row[target]) : QNAN;
}

// Streaming version (inference, rows too long for shared memory, or packs narrower than 8): one pass
// keeps a running (max, sum), the gradient pass (with write_grad) re-reads the row from global memory.
extern "C" __global__ void softmax_crossentropy(float* losses, bf16* logits, const int* targets, int V, int Vp,
                                                float dloss, int write_grad) {
    bf16* x = logits + (long)blockIdx.x * Vp;
    int packs = Vp / PACK, packs_v = (V + PACK - 1) / PACK;
    float m = NEG_INF, s = 0.0f, v[PACK];
    for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
        load_bf16(v, x + p * PACK);
        float vm = pack_max(v, p * PACK, V);
        softmax_merge(m, s, vm, pack_exp_sum(v, p * PACK, V, vm));
    }
    block_softmax_stats(m, s);
    int target = targets[blockIdx.x];
    if (threadIdx.x == 0)
        losses[blockIdx.x] = row_loss(m, s, target, V, x);
    if (!write_grad) return;
    __syncthreads();  // x[target] is read above before any thread overwrites it
    float inv = 1.0f / s;
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
        if (p < packs_v) load_bf16(v, x + p * PACK);
        store_dlogits(x, p, v, V, target, m, inv, dloss);  // padding packs: v unused, zeros written
    }
}

// Training version: persistent blocks (one per SM) walk the rows with two row buffers in shared
// memory, the next row streaming in (cp.async) while this one is reduced and its gradient written,
// so DRAM never waits for the block's barriers. Each row crosses DRAM once each way: pass 1 takes
// the max (bf16x2, exact), pass 2 sums exp(x - max) and leaves each exp in place of its logit (fp16,
// scaled by 2^15 so probabilities down to ~2e-9 keep 11 bits), pass 3 writes the gradient from those:
// one exp per logit, not two, and no per-logit bounds or target tests (the kernel is near compute-
// bound at the power cap). The target's own gradient, p - 1, is taken from its fp32 exp (no
// cancellation of an fp16 p near 1). Every thread reads only the packs it copied itself; the owner of
// the target's pack writes the row's loss. 16-byte packs only (cp.async copies them, the passes use
// their bf16x2 halves): the launcher takes it at PACK 8.
#if PACK == 8
#define EXP_SCALE_LOG2 15.0f

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// the first `valid` logits of a pack -> 2^(x log2e + shift), the rest 0
__device__ __forceinline__ void exp_pack(float (&v)[PACK], int valid, float log2e, float shift) {
#pragma unroll
    for (int k = 0; k < PACK; k++) v[k] = k < valid ? exp2_approx(fmaf(v[k], log2e, shift)) : 0.0f;
}

// a pack of scaled exps (fp16) -> bf16 gradients exp * scale, element `k_target` (if any) replaced
__device__ __forceinline__ uint4 gradient_pack(uint4 exps, float scale, int k_target, float g_target) {
    uint4 out;
    const __half2* e = reinterpret_cast<const __half2*>(&exps);
    __nv_bfloat162* g = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int k = 0; k < PACK / 2; k++) {
        float2 f = __half22float2(e[k]);
        g[k] = __floats2bfloat162_rn(2 * k == k_target ? g_target : f.x * scale,
                                     2 * k + 1 == k_target ? g_target : f.y * scale);
    }
    return out;
}

extern "C" __global__ void __launch_bounds__(1024, 1)
softmax_crossentropy_train(float* losses, bf16* logits, const int* targets, int N, int V, int Vp, float dloss) {
    extern __shared__ uint4 buffers[];  // 2 rows of Vp / 8 packs
    __shared__ float shared[32];
    const float log2e = 1.4426950408889634f;
    int packs = Vp / PACK, packs_v = (V + PACK - 1) / PACK, full_packs = V / PACK;
    auto prefetch = [&](uint4* row, int r) {
        const uint4* src = reinterpret_cast<const uint4*>(logits + (long)r * Vp);
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) copy_async16(row + p, src + p);
    };
    if (blockIdx.x < N) prefetch(buffers, blockIdx.x);
    copy_async_commit();
    for (int r = blockIdx.x, i = 0; r < N; r += gridDim.x, i++) {
        uint4* row = buffers + (i & 1) * packs;
        if (r + gridDim.x < N) prefetch(buffers + ((i + 1) & 1) * packs, r + gridDim.x);
        copy_async_commit();  // possibly empty: the wait below always leaves the newest group in flight
        copy_async_wait_all_but_latest();
        int target = targets[r];
        int target_pack = target >= 0 && target < V ? target / PACK : -1;
        int owner = target_pack >= 0 ? target_pack % blockDim.x : 0;
        float x_target = threadIdx.x == owner && target_pack >= 0 ?
                         __bfloat162float(reinterpret_cast<const bf16*>(row)[target]) : 0.0f;
        float v[PACK], m = NEG_INF;
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
            if (p < full_packs) {
                const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(row + p);
                __nv_bfloat162 h2 = __hmax2(__hmax2(h[0], h[1]), __hmax2(h[2], h[3]));
                m = fmaxf(m, fmaxf(__low2float(h2), __high2float(h2)));
            } else {
                unpack_bf16(v, row[p]);
                m = fmaxf(m, pack_max(v, p * PACK, V));
            }
        }
        m = block_max(m, shared);
        float shift = EXP_SCALE_LOG2 - m * log2e, s = 0.0f;  // exp(x - m) 2^15 = 2^(x log2e + shift)
        for (int p = threadIdx.x; p < packs_v; p += blockDim.x) {
            unpack_bf16(v, row[p]);
            if (p < full_packs) exp_pack(v, PACK, log2e, shift);
            else exp_pack(v, V - p * PACK, log2e, shift);
            uint4 out;
            __half2* e = reinterpret_cast<__half2*>(&out);
#pragma unroll
            for (int k = 0; k < PACK / 2; k++) {
                s += v[2 * k] + v[2 * k + 1];
                e[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
            }
            row[p] = out;
        }
        s = block_sum(s, shared);  // the sum of exp(x - m) 2^15
        if (threadIdx.x == owner)
            losses[r] = target_pack >= 0 ? m + logf(s) - EXP_SCALE_LOG2 * 0.6931471805599453f - x_target : QNAN;
        float scale = dloss / s;
        bf16* x = logits + (long)r * Vp;
        for (int p = threadIdx.x; p < packs; p += blockDim.x) {
            uint4 out = make_uint4(0, 0, 0, 0);  // padding packs: zeros
            if (p == target_pack) {
                float p_target = exp2_approx(fmaf(x_target, log2e, shift)) / s;
                out = gradient_pack(row[p], scale, target % PACK, (p_target - 1.0f) * dloss);
            } else if (p < packs_v) {
                out = gradient_pack(row[p], scale, -1, 0.0f);
            }
            __stcs(reinterpret_cast<uint4*>(x) + p, out);  // streamed: the GEMMs read dlogits much later
        }
        __syncthreads();  // everyone is done with this buffer before the next iteration refills it
    }
}
#endif

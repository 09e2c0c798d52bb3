// The fallback causal attention's softmax, for machines without cuDNN's fused SDPA. The score
// matrices come from cuBLASLt batched matmuls (one batch element at a time, heads batched):
// S (NH, T, T) fp32, already scaled by 1/sqrt(HS). Rows are (head, query) pairs; a block per row.
#include "common.cuh"

// P = softmax over the causal part of each row of S, as bf16, zeros above the diagonal.
// With compute_stats, lse (NH, T) receives each row's log-sum-exp (the state the backward needs,
// the same as cuDNN's stats); otherwise lse is read (the backward recomputing P).
extern "C" __global__ void attention_softmax_forward(bf16* P, float* lse, const float* S, int T,
                                                     int compute_stats) {
    __shared__ float shared[32];
    int row = blockIdx.x, i = row % T;  // query position
    const float* s = S + (long)row * T;
    bf16* p = P + (long)row * T;
    float l;
    if (compute_stats) {
        float m = NEG_INF;
        for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j]);
        m = block_max(m, shared);
        float sum = 0.0f;
        for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(s[j] - m);
        l = m + logf(block_sum(sum, shared));
        if (threadIdx.x == 0) lse[row] = l;
    } else {
        l = lse[row];
    }
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        p[j] = __float2bfloat16(j <= i ? expf(s[j] - l) : 0.0f);
}

// dS = P * (dP - sum_j P dP) * scale over the causal part, zeros above; written over P.
extern "C" __global__ void attention_softmax_backward(bf16* P, const float* dP, int T, float scale) {
    __shared__ float shared[32];
    int row = blockIdx.x, i = row % T;
    bf16* p = P + (long)row * T;
    const float* dp = dP + (long)row * T;
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += __bfloat162float(p[j]) * dp[j];
    dot = block_sum(dot, shared);
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        p[j] = __float2bfloat16(j <= i ? __bfloat162float(p[j]) * (dp[j] - dot) * scale : 0.0f);
}

// Grouped-query attention in the fallback: qkv rows of NH query, NKV key and NKV value heads (HS
// channels each) widened to GPT-2's 3 * NH heads, each key/value head repeated for the NH / NKV query
// heads of its group, so that the matmuls above run unchanged. One thread per pack of the wide row;
// attention.py takes PACK dividing HS (a pack within one head).
extern "C" __global__ void attention_repeat_kv(bf16* wide, const bf16* qkv, long N, int NH, int NKV, int HS) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int C = NH * HS, packs = 3 * C / PACK;
    if (i >= N * packs) return;
    long n = i / packs;
    int c = (int)(i % packs) * PACK;
    int part = c / C, h = c % C / HS, d = c % HS;  // part 0: q, 1: k, 2: v
    int src = part == 0 ? c : C + (part - 1) * NKV * HS + h / (NH / NKV) * HS + d;
    *reinterpret_cast<pack_t*>(wide + n * 3 * C + c) = load_raw(qkv + n * (C + 2 * NKV * HS) + src);
}

// The gradient back to the grouped layout: dq copied, each key/value head's gradient the sum over its
// group's query heads in order (fp32). One thread per pack of the grouped row.
extern "C" __global__ void attention_reduce_kv(bf16* dqkv, const bf16* dwide, long N, int NH, int NKV, int HS) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int C = NH * HS, KC = NKV * HS, row = C + 2 * KC, packs = row / PACK;
    if (i >= N * packs) return;
    long n = i / packs;
    int c = (int)(i % packs) * PACK;
    const bf16* src = dwide + n * 3 * C;
    bf16* dst = dqkv + n * row + c;
    if (c < C) {
        *reinterpret_cast<pack_t*>(dst) = load_raw(src + c);
        return;
    }
    int part = (c - C) / KC, j = (c - C) % KC / HS, d = c % HS, group = NH / NKV;  // part 0: k, 1: v
    float sum[PACK] = {}, g[PACK];
    for (int h = j * group; h < (j + 1) * group; h++) {
        load_bf16(g, src + (1 + part) * C + h * HS + d);
#pragma unroll
        for (int k = 0; k < PACK; k++) sum[k] += g[k];
    }
    store_bf16(dst, sum);
}

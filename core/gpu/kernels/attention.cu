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

// Token + position embedding, forward and a deterministic backward.
#include "common.cuh"

// out (N,C) = wte[inp[n]] + wpe[n % T]; one thread per 8 channels. Token ids outside [0, Vp)
// give NaN rows (the loss then turns NaN and the loop stops) instead of a wild read.
extern "C" __global__ void encoder_forward(bf16* out, const int* inp, const bf16* wte, const bf16* wpe,
                                           int N, int T, int C, int Vp) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int C8 = C / PACK;
    if (idx >= (long)N * C8) return;
    int n = idx / C8, c = (idx % C8) * PACK;
    int t = n % T, tok = inp[n];
    float o[PACK];
    if (tok < 0 || tok >= Vp) {
#pragma unroll
        for (int k = 0; k < PACK; k++) o[k] = QNAN;
    } else {
        float a[PACK], b[PACK];
        load8(a, wte + (long)tok * C + c);
        load8(b, wpe + (long)t * C + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) o[k] = a[k] + b[k];
    }
    store8(out + (long)n * C + c, o);
}

// dwpe[t] += sum over b of dout[b, t]; one thread per (t, 8 channels), summed in a fixed order.
extern "C" __global__ void encoder_backward_wpe(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int C8 = C / PACK;
    if (idx >= (long)T * C8) return;
    int t = idx / C8, c = (idx % C8) * PACK;
    float acc[PACK], d[PACK];
    load8(acc, dwpe + (long)t * C + c);
    for (int b = 0; b < B; b++) {
        load8(d, dout + ((long)b * T + t) * C + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) acc[k] += d[k];
    }
    store8(dwpe + (long)t * C + c, acc);
}

// Positions sorted by (token, position): sorted[rank] = n, rank = #{m : (inp[m], m) < (inp[n], n)}.
// A counting sort by comparison, O(N^2) simple integer work (N = B*T), with no atomics, no
// scratch to clear, and a result independent of scheduling: the backward below is deterministic.
#define SORT_TILE 1024
extern "C" __global__ void encoder_sort_positions(int* sorted, const int* inp, int N) {
    __shared__ int tile[SORT_TILE];
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    int tok = n < N ? inp[n] : 0;
    int rank = 0;
    for (int start = 0; start < N; start += SORT_TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < SORT_TILE; i += blockDim.x)
            tile[i] = start + i < N ? inp[start + i] : 0x7fffffff;
        __syncthreads();
        int end = min(SORT_TILE, N - start);
        int self = n - start;  // position of n inside this tile, if it is there
#pragma unroll 8
        for (int i = 0; i < end; i++) {
            int other = tile[i];
            rank += (other < tok) | ((other == tok) & (i < self));
        }
    }
    if (n < N) sorted[rank] = n;
}

// dwte[tok] += sum of dout rows of every position holding tok. One block per sorted position;
// the block at the start of a run of equal tokens sums the run in position order (fp32), then
// adds once into the bf16 row. blockDim.x = C / 8.
extern "C" __global__ void encoder_backward_wte(bf16* dwte, const int* sorted, const int* inp,
                                                const bf16* dout, int N, int C, int Vp) {
    int i = blockIdx.x;
    int tok = inp[sorted[i]];
    if (i > 0 && inp[sorted[i - 1]] == tok) return;
    if (tok < 0 || tok >= Vp) return;
    int c = threadIdx.x * PACK;
    float acc[PACK] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, d[PACK];
    for (int j = i; j < N; j++) {
        int n = sorted[j];
        if (inp[n] != tok) break;
        load8(d, dout + (long)n * C + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) acc[k] += d[k];
    }
    float w[PACK];
    load8(w, dwte + (long)tok * C + c);
#pragma unroll
    for (int k = 0; k < PACK; k++) w[k] += acc[k];
    store8(dwte + (long)tok * C + c, w);
}

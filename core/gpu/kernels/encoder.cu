// Token + position embedding, forward and a deterministic backward (no float atomics: each token's
// gradient rows are summed in position order).
#include "common.cuh"

// out (N,C) = wte[inp[n]] + wpe[n % T], or wte[inp[n]] alone where wpe is null (Llama: RoPE instead);
// one thread per pack of PACK channels. Token ids outside [0, Vp)
// give NaN rows (the loss then turns NaN and the loop stops) instead of a wild read.
extern "C" __global__ void encoder_forward(bf16* out, const int* inp, const bf16* wte, const bf16* wpe,
                                           int N, int T, int C, int Vp) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int packs = C / PACK;
    if (idx >= (long)N * packs) return;
    int n = idx / packs, c = (idx % packs) * PACK;
    int t = n % T, tok = inp[n];
    float o[PACK];
    if (tok < 0 || tok >= Vp) {
#pragma unroll
        for (int k = 0; k < PACK; k++) o[k] = QNAN;
    } else {
        load_bf16(o, wte + (long)tok * C + c);
        if (wpe) {
            float b[PACK];
            load_bf16(b, wpe + (long)t * C + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) o[k] += b[k];
        }
    }
    store_bf16(out + (long)n * C + c, o);
}

// dwpe[t] += sum over b of dout[b, t]; one thread per (t, pack of channels), summed in a fixed order.
extern "C" __global__ void encoder_backward_wpe(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int packs = C / PACK;
    if (idx >= (long)T * packs) return;
    int t = idx / packs, c = (idx % packs) * PACK;
    float acc[PACK], d[PACK];
    load_bf16(acc, dwpe + (long)t * C + c);
    for (int b = 0; b < B; b++) {
        load_bf16(d, dout + ((long)b * T + t) * C + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) acc[k] += d[k];
    }
    store_bf16(dwpe + (long)t * C + c, acc);
}

// Positions sorted by (token, position), so that the backward below sums each token's rows in a
// fixed order: a counting sort. Out-of-range ids share the extra bucket Vp (skipped by the backward).
// 1. count[tok]++ (count zeroed by the caller)
extern "C" __global__ void encoder_count(int* count, const int* inp, int N, int Vp) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    int tok = inp[n];
    atomicAdd(count + (tok < 0 || tok >= Vp ? Vp : tok), 1);
}

// 2. offset = exclusive prefix sum of count (n = Vp + 1 buckets), cursor = a copy. One block of
// 1024 threads walks the counts in tiles of 16 consecutive counts per thread (4 x 128-bit loads).
#define SCAN_PER_THREAD 16
extern "C" __global__ void encoder_offsets(int* offset, int* cursor, const int* count, int n) {
    __shared__ int warp_sums[32];
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    int carry = 0;  // the counts of the tiles before
    for (int tile = 0; tile < n; tile += SCAN_PER_THREAD * blockDim.x) {
        int first = tile + SCAN_PER_THREAD * threadIdx.x, c[SCAN_PER_THREAD], local = 0;
        if (first + SCAN_PER_THREAD <= n) {
#pragma unroll
            for (int k = 0; k < SCAN_PER_THREAD; k += 4) {
                int4 q = *reinterpret_cast<const int4*>(count + first + k);
                c[k] = q.x, c[k + 1] = q.y, c[k + 2] = q.z, c[k + 3] = q.w;
            }
        } else {
#pragma unroll
            for (int k = 0; k < SCAN_PER_THREAD; k++) c[k] = first + k < n ? count[first + k] : 0;
        }
#pragma unroll
        for (int k = 0; k < SCAN_PER_THREAD; k++) local += c[k];
        int incl = local;  // inclusive scan of the threads' totals within the warp, then across warps
#pragma unroll
        for (int o = 1; o < WARP_SIZE; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane == WARP_SIZE - 1) warp_sums[warp] = incl;
        __syncthreads();
        int running = carry + incl - local, total = 0;
        for (int w = 0; w < warps; w++) {
            running += w < warp ? warp_sums[w] : 0;
            total += warp_sums[w];
        }
#pragma unroll
        for (int k = 0; k < SCAN_PER_THREAD; k++) {
            if (first + k < n) offset[first + k] = cursor[first + k] = running;
            running += c[k];
        }
        carry += total;
        __syncthreads();  // warp_sums is refilled by the next tile
    }
}

// 3. each position into its token's bucket, in arbitrary order
extern "C" __global__ void encoder_scatter(int* bucket, int* cursor, const int* inp, int N, int Vp) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    int tok = inp[n];
    bucket[atomicAdd(cursor + (tok < 0 || tok >= Vp ? Vp : tok), 1)] = n;
}

// 4. the same buckets in position order: a position's rank is the number of smaller positions in its
// bucket (work: the sum of squared bucket sizes)
extern "C" __global__ void encoder_sort_buckets(int* sorted, const int* bucket, const int* offset, const int* count,
                                                const int* inp, int N, int Vp) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    int tok = inp[n];
    tok = tok < 0 || tok >= Vp ? Vp : tok;
    const int* b = bucket + offset[tok];
    int size = count[tok], rank = 0;
    for (int j = 0; j < size; j++) rank += b[j] < n;
    sorted[offset[tok] + rank] = n;
}

// dwte[tok] += sum of dout rows of every position holding tok. One block per sorted position;
// the block at the start of a run of equal tokens sums the run in position order (fp32), then
// adds once into the bf16 row. A thread per pack of channels: blockDim.x = C / PACK, or fewer (at most
// 1024) with each thread taking every blockDim.x-th pack.
extern "C" __global__ void encoder_backward_wte(bf16* dwte, const int* sorted, const int* inp,
                                                const bf16* dout, int N, int C, int Vp) {
    int i = blockIdx.x;
    int tok = inp[sorted[i]];
    if (i > 0 && inp[sorted[i - 1]] == tok) return;
    if (tok < 0 || tok >= Vp) return;
    for (int c = threadIdx.x * PACK; c < C; c += blockDim.x * PACK) {
        float acc[PACK] = {}, d[PACK];
        for (int j = i; j < N; j++) {
            int n = sorted[j];
            if (inp[n] != tok) break;
            load_bf16(d, dout + (long)n * C + c);
#pragma unroll
            for (int k = 0; k < PACK; k++) acc[k] += d[k];
        }
        float w[PACK];
        load_bf16(w, dwte + (long)tok * C + c);
#pragma unroll
        for (int k = 0; k < PACK; k++) w[k] += acc[k];
        store_bf16(dwte + (long)tok * C + c, w);
    }
}

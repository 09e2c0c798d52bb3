// AdamW over a flat run of parameters in one launch: bf16 parameters and gradients, fp32 m and v,
// optional fp32 master weights; weight decay only inside the given [start, stop) spans. Without
// master weights the new value is written to bf16 with stochastic rounding, its random bits a hash
// of (element index, seed): reproducible for a given seed.
#include "common.cuh"

// the whole flat buffers, 16-byte aligned (ZeRO shards start at multiples of 8 elements): always 8-wide
static_assert(PACK == 8, "adamw.cu reads 8-element packs of bf16 and fp32");

// fp32 -> bf16, rounding up with probability equal to the dropped fraction
__device__ __forceinline__ bf16 stochastic_round(float x, unsigned long i, unsigned int seed) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(x);  // inf / nan stay
    unsigned int r = hash_u32((unsigned int)i, seed ^ (unsigned int)(i >> 32) * 0x27d4eb2fu) & 0xffffu;
    return __ushort_as_bfloat16((unsigned short)((bits + r) >> 16));
}

__device__ __forceinline__ float adamw_step(float w, float g, float* m, float* v, float lr, float beta1,
                                            float beta2, float bc1, float bc2, float eps, float wd) {
    float mm = beta1 * *m + (1.0f - beta1) * g;
    float vv = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mm;
    *v = vv;
    return w - lr * ((mm / bc1) / (sqrtf(vv / bc2) + eps) + wd * w);
}

// weight decay of element i: wd inside one of the spans (pairs of [start, stop)), else 0; all
// elements when nspans < 0
__device__ __forceinline__ float decay_at(long i, const long* spans, int nspans, float wd) {
    if (nspans < 0) return wd;
    for (int k = 0; k < nspans; k++)
        if (i >= spans[2 * k] && i < spans[2 * k + 1]) return wd;
    return 0.0f;
}

// one thread per 8 elements; the tail (n % 8) by the first threads, element by element.
// master may be null. bc1, bc2 = 1 - beta^step.
extern "C" __global__ void adamw_update(bf16* param, float* master, const bf16* grad, float* m, float* v,
                                        long n, float lr, float beta1, float beta2, float bc1, float bc2,
                                        float eps, float wd, float grad_scale, unsigned int seed,
                                        const long* spans, int nspans, const float* norm_squared,
                                        float max_norm) {
    if (norm_squared) {  // clip on the device: the host need not see the norm before the update
        float norm = sqrtf(*norm_squared);
        if (!isfinite(norm)) return;  // non-finite gradients: everything stays as it was
        if (norm > max_norm) grad_scale *= max_norm / norm;
    }
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    if (i + PACK <= n) {
        float p[PACK], g[PACK], mm[PACK], vv[PACK];
        load_bf16_cs(g, grad + i);
        if (master) {
            *reinterpret_cast<float4*>(p) = __ldcs(reinterpret_cast<const float4*>(master + i));
            *reinterpret_cast<float4*>(p + 4) = __ldcs(reinterpret_cast<const float4*>(master + i + 4));
        } else {
            load_bf16_cs(p, param + i);
        }
        *reinterpret_cast<float4*>(mm) = __ldcs(reinterpret_cast<const float4*>(m + i));
        *reinterpret_cast<float4*>(mm + 4) = __ldcs(reinterpret_cast<const float4*>(m + i + 4));
        *reinterpret_cast<float4*>(vv) = __ldcs(reinterpret_cast<const float4*>(v + i));
        *reinterpret_cast<float4*>(vv + 4) = __ldcs(reinterpret_cast<const float4*>(v + i + 4));
#pragma unroll
        for (int k = 0; k < PACK; k++)
            p[k] = adamw_step(p[k], g[k] * grad_scale, mm + k, vv + k, lr, beta1, beta2, bc1, bc2, eps,
                              decay_at(i + k, spans, nspans, wd));
        __stcs(reinterpret_cast<float4*>(m + i), *reinterpret_cast<float4*>(mm));
        __stcs(reinterpret_cast<float4*>(m + i + 4), *reinterpret_cast<float4*>(mm + 4));
        __stcs(reinterpret_cast<float4*>(v + i), *reinterpret_cast<float4*>(vv));
        __stcs(reinterpret_cast<float4*>(v + i + 4), *reinterpret_cast<float4*>(vv + 4));
        if (master) {
            __stcs(reinterpret_cast<float4*>(master + i), *reinterpret_cast<float4*>(p));
            __stcs(reinterpret_cast<float4*>(master + i + 4), *reinterpret_cast<float4*>(p + 4));
            store_bf16(param + i, p);
        } else {
            uint4 raw;
            bf16* out = reinterpret_cast<bf16*>(&raw);
#pragma unroll
            for (int k = 0; k < PACK; k++) out[k] = stochastic_round(p[k], i + k, seed);
            *reinterpret_cast<uint4*>(param + i) = raw;
        }
    }
    long tail = (n / PACK) * PACK + (long)blockIdx.x * blockDim.x + threadIdx.x;  // needs >= 8 threads
    if (tail < n) {
        float w = master ? master[tail] : __bfloat162float(param[tail]);
        w = adamw_step(w, __bfloat162float(grad[tail]) * grad_scale, m + tail, v + tail, lr, beta1, beta2,
                       bc1, bc2, eps, decay_at(tail, spans, nspans, wd));
        if (master) master[tail] = w;
        param[tail] = master ? __float2bfloat16(w) : stochastic_round(w, tail, seed);
    }
}

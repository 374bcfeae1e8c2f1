/* cuda_fp16.h (cudasim): the IEEE half type and the conversions the fp16-storage kernels use,
 * plus the simulator's fp16 tensor-core instruction (mma.sync.m16n8k16.row.col.f32.f16.f16.f32).
 * __float2half_rn rounds to nearest even, keeps half's subnormals and overflows to Inf, as the
 * device instruction does; NaN stays NaN. Kernels treat __half as 16 opaque bits plus these
 * conversions (no half arithmetic), so the stand-in stays this small. */
#ifndef CUDASIM_CUDA_FP16_H
#define CUDASIM_CUDA_FP16_H

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
    uint16_t bits; /* sign, 5 exponent bits, 10 mantissa bits */
};
struct alignas(4) __half2 {
    __half x, y; /* x at the lower address: the low half of the 32-bit word */
};

static inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    const uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13); /* Inf or NaN */
    } else if (exp == 0) {
        const float mag = (float)man * 5.9604644775390625e-08f; /* man · 2^-24, exact */
        std::memcpy(&u, &mag, sizeof u);
        u |= sign;
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

static inline __half __float2half_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    __half h;
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const float a = std::fabs(f);
    if (std::isnan(f)) {
        h.bits = (uint16_t)(sign | 0x7e00u);
    } else if (a >= 65520.0f) { /* rounds past the largest half, 65504 */
        h.bits = (uint16_t)(sign | 0x7c00u);
    } else if (a < 6.103515625e-05f) { /* below 2^-14: subnormal steps of 2^-24 */
        h.bits = (uint16_t)(sign | (uint16_t)std::nearbyint((double)a * 16777216.0));
    } else {
        uint32_t m = u & 0x7fffffffu;
        m += 0xfffu + ((m >> 13) & 1u); /* round to nearest even on the 13 dropped bits */
        h.bits = (uint16_t)(sign | (((m >> 23) - 112u) << 10) | ((m >> 13) & 0x3ffu));
    }
    return h;
}

static inline __half2 __floats2half2_rn(float lo, float hi) {
    __half2 v;
    v.x = __float2half_rn(lo);
    v.y = __float2half_rn(hi);
    return v;
}

namespace cudasim {
/* The warp-collective fp16 MMA, D = A·B + C: the twin of mma_m16n8k16_bf16 (cuda_bf16.h, which
 * documents the fragment layout) with two fp16 per 32-bit register instead of two bf16. Products
 * are exact in fp32 (fp16 x fp16 needs 22 mantissa bits) and summed in fp32. */
void mma_m16n8k16_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1);
} // namespace cudasim

#endif

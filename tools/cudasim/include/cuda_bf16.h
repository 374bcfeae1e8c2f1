/* cuda_bf16.h (cudasim): the bfloat16 types and conversions the fast kernels use, plus the
 * simulator's bf16 tensor-core instruction (mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32).
 * Conversions round to nearest even, as __float2bfloat16_rn does; NaN stays NaN. */
#ifndef CUDASIM_CUDA_BF16_H
#define CUDASIM_CUDA_BF16_H

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    uint16_t bits; /* the upper 16 bits of the fp32 pattern */
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y; /* x at the lower address: the low half of the 32-bit word */
};

static inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    __nv_bfloat16 h;
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) { /* NaN: keep it quiet and a NaN */
        h.bits = (uint16_t)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    h.bits = (uint16_t)(u >> 16);
    return h;
}

static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    __nv_bfloat162 v;
    v.x = __float2bfloat16_rn(lo);
    v.y = __float2bfloat16_rn(hi);
    return v;
}

namespace cudasim {
/* The warp-collective bf16 MMA, D = A·B + C for A 16x16 (row), B 16x8 (col), C, D 16x8 fp32, each
 * lane holding the fragment elements PTX's ISA assigns it (group g = lane / 4, t = lane % 4):
 *   a[0]: A[g][2t, 2t+1]  a[1]: A[g+8][2t, 2t+1]  a[2]: A[g][2t+8, 2t+9]  a[3]: A[g+8][2t+8, 2t+9]
 *   b0:   B[2t, 2t+1][g]  b1:   B[2t+8, 2t+9][g]
 *   c[0], c[1]: C[g][2t, 2t+1]  c[2], c[3]: C[g+8][2t, 2t+1]
 * (each 32-bit register holds two bf16, the lower-indexed element in the low half). Products are
 * exact in fp32 (bf16 x bf16) and summed in fp32. Every lane of the warp must call it together. */
void mma_m16n8k16_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1);
} // namespace cudasim

#endif

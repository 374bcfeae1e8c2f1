/* cudasim_rounding.cpp: the rounding of fp32 values to the precision a tensor-core path reads
 * them at (cudasim.h): round to nearest even on the mantissa, written from the formats'
 * definitions; fp16 also keeps its range (overflow to Inf, subnormals below 2^-14). Shared by the
 * runtime and the library stand-ins' self-test. */
#include "cudasim.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace cudasim {

static uint32_t bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}
static float from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Keeps the top `keep` mantissa bits of 23, rounding to nearest even. */
static float round_mantissa(float x, int keep) {
    if (std::isnan(x) || std::isinf(x)) return x;
    const int drop = 23 - keep;
    uint32_t u = bits(x);
    const uint32_t half = (1u << (drop - 1)) - 1 + ((u >> drop) & 1u);
    u += half;
    u &= ~((1u << drop) - 1);
    return from_bits(u);
}

float round_bf16(float x) { return round_mantissa(x, 7); }
float round_tf32(float x) { return round_mantissa(x, 10); }

float round_fp16(float x) {
    if (std::isnan(x)) return x;
    const float ax = std::fabs(x);
    if (ax >= 65520.0f) return std::copysign(INFINITY, x); /* rounds past the largest half, 65504 */
    if (ax < 6.103515625e-05f) {                          /* below 2^-14: half's subnormals, step 2^-24 */
        const double q = std::nearbyint((double)x * 16777216.0);
        return (float)(q / 16777216.0);
    }
    return round_mantissa(x, 10);
}

} // namespace cudasim

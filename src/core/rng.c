/* rng.c: mt19937 and torch.randn's CPU float32 normal fill (see core.h). */
#include <math.h>

#include "sd/core.h"

void sd_rng_seed(sd_rng *r, uint64_t seed) {
    r->state[0] = (uint32_t)seed; /* torch's mt19937 takes the low 32 bits */
    for (int i = 1; i < 624; i++)
        r->state[i] = 1812433253u * (r->state[i - 1] ^ (r->state[i - 1] >> 30)) + (uint32_t)i;
    r->index = 624;
}

uint32_t sd_rng_u32(sd_rng *r) {
    if (r->index >= 624) {
        for (int i = 0; i < 624; i++) {
            const uint32_t y = (r->state[i] & 0x80000000u) | (r->state[(i + 1) % 624] & 0x7fffffffu);
            r->state[i] = r->state[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        r->index = 0;
    }
    uint32_t y = r->state[r->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* at::uniform_real_distribution<float>(0, 1): 24 random bits scaled by 2^-24. */
static float uniform01(sd_rng *r) { return (float)(sd_rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f); }

/* Box-Muller on a block of 16 uniforms: (j, j + 8) become a pair of normals. */
static void normal_fill_16(float *d) {
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - d[j]; /* (0, 1] for the log */
        const float u2 = d[j + 8];
        const float radius = sqrtf(-2.0f * logf(u1));
        const float theta = (float)(6.283185307179586 * (double)u2); /* 2π in double, as torch */
        d[j] = radius * cosf(theta);
        d[j + 8] = radius * sinf(theta);
    }
}

void sd_rng_randn(sd_rng *r, float *out, int64_t n) {
    if (n < 16) {
        for (int64_t i = 0; i < n; i += 2) {
            const float u1 = 1.0f - uniform01(r), u2 = uniform01(r);
            const float radius = sqrtf(-2.0f * logf(u1)), theta = 6.2831853f * u2;
            out[i] = radius * cosf(theta);
            if (i + 1 < n) out[i + 1] = radius * sinf(theta);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = uniform01(r);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16) { /* torch redraws the last 16 values from fresh uniforms */
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform01(r);
        normal_fill_16(tail);
    }
}

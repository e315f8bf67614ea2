/* Shared helpers of limner's compiled kernels (included by each .c file). */

#ifndef LIMNER_KERNEL_MATH_H
#define LIMNER_KERNEL_MATH_H

#include <stdint.h>
#include <string.h>

/* exp(x) for x in [-87, 88] (clamped outside) with an error below float rounding: range
 * reduction to |r| <= ln(2)/2 and a degree-7 Taylor series, which the compiler can vectorise
 * (the C library's expf is not vectorised without -ffast-math). */
static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (no rounding-mode call needed) */
    const float magic = 12582912.0f;
    float n = (x * 1.44269504088896341f + magic) - magic;
    float r = x - n * 0.693145751953125f; /* ln 2 split in a high part exact in float... */
    r = r - n * 1.428606765330187e-06f;   /* ...and the rest */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#endif

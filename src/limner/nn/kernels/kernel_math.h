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

/* 16 floats: one AVX-512 register, or two or four narrower ones (GCC vector extension). */
typedef float v16 __attribute__((vector_size(64)));

static inline v16 vload(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vstore(float *p, v16 v) { memcpy(p, &v, sizeof v); }

#define GEMM_ROWS 8 /* rows of gemm_rows8's register tile */

/* c [8][n] = a [8][K] . b [K][n], n a multiple of 16, with row strides lda, ldb and ldc: register
 * tiles of 8 rows x 32 columns (then 8 x 16 for a last 16 columns), each output summed over k in
 * order, so the result does not depend on how callers split their work. The matrix products of
 * attention.c and winograd.c. */
static inline void gemm_rows8(const float *a, int64_t lda, int64_t K, const float *b, int64_t ldb, int64_t n,
                              float *c, int64_t ldc) {
    int64_t j0 = 0;
    for (; j0 + 32 <= n; j0 += 32) {
        v16 acc[GEMM_ROWS][2] = {{{0}}};
        for (int64_t k = 0; k < K; k++) {
            const v16 b0 = vload(b + k * ldb + j0), b1 = vload(b + k * ldb + j0 + 16);
#pragma GCC unroll 8
            for (int i = 0; i < GEMM_ROWS; i++) {
                const float s = a[i * lda + k];
                acc[i][0] += s * b0;
                acc[i][1] += s * b1;
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < GEMM_ROWS; i++) {
            vstore(c + i * ldc + j0, acc[i][0]);
            vstore(c + i * ldc + j0 + 16, acc[i][1]);
        }
    }
    if (j0 < n) {
        v16 acc[GEMM_ROWS] = {{0}};
        for (int64_t k = 0; k < K; k++) {
            const v16 b0 = vload(b + k * ldb + j0);
#pragma GCC unroll 8
            for (int i = 0; i < GEMM_ROWS; i++) acc[i] += a[i * lda + k] * b0;
        }
#pragma GCC unroll 8
        for (int i = 0; i < GEMM_ROWS; i++) vstore(c + i * ldc + j0, acc[i]);
    }
}

#endif

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

/* The build's vector width and register tile, chosen per CPU by limner/nn/kernels/__init__.py from
 * timings of every candidate build (-DLIMNER_VL=... -DLIMNER_GEMM_ROWS=...): VL floats per vector
 * (16: one AVX-512 register; 8: one AVX2 register, where a 16-float vector would be emulated
 * through memory), GEMM_ROWS rows of the matrix products' register tile (8 rows x 2 vectors of
 * accumulators fit AVX-512's 32 registers, 6 x 2 AVX2's 16). Every output element is computed by
 * the same operations in the same order whatever VL and GEMM_ROWS are (sums over k in order,
 * element-wise transforms), so every build gives the same bits; only the speed differs. */
#ifndef LIMNER_VL
#define LIMNER_VL 16
#endif
#ifndef LIMNER_GEMM_ROWS
#define LIMNER_GEMM_ROWS 8
#endif
#define VL LIMNER_VL
#define GEMM_ROWS LIMNER_GEMM_ROWS
#if VL != 4 && VL != 8 && VL != 16
#error "LIMNER_VL must be 4, 8 or 16"
#endif

/* VL floats (GCC vector extension). Channel counts are multiples of 16, so of VL too. */
typedef float vfloat __attribute__((vector_size(4 * VL)));

static inline vfloat vload(const float *p) {
    vfloat v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }

/* bfloat16 values are handled as their raw bits (uint16_t): one value, then VL at a time. Widening
 * is exact (a bfloat16 is the top half of a float); rounding is to nearest, ties to even, as
 * PyTorch rounds, and a NaN stays a NaN (0x7fc0). The scalar and vector forms give the same bits. */
static inline float bf16_load(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_round(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* VL bfloat16 values (raw bits) and VL 32-bit integers, for loading and rounding bfloat16 maps. */
typedef uint16_t vbf16 __attribute__((vector_size(2 * VL)));
typedef uint32_t vuint __attribute__((vector_size(4 * VL)));

/* VL bfloat16 values widened to float (exact: a bfloat16 is the top half of a float). */
static inline vfloat vload_bf16(const uint16_t *p) {
    vbf16 h;
    memcpy(&h, p, sizeof h);
    return (vfloat)(__builtin_convertvector(h, vuint) << 16);
}

/* VL floats rounded to bfloat16 to nearest, ties to even, as PyTorch rounds; NaN stays NaN. */
static inline void vstore_bf16(uint16_t *p, vfloat v) {
    const vuint bits = (vuint)v;
    const vuint nan = (bits & 0x7fffffffu) > 0x7f800000u; /* all ones where v is NaN */
    const vuint rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const vbf16 h = __builtin_convertvector((rounded & ~nan) | (0x7fc0u & nan), vbf16);
    memcpy(p, &h, sizeof h);
}

/* Element `i` of a map of floats (bf = 0) or bfloat16 values (bf = 1) as VL floats, and the
 * store back; callers pass bf as a constant, so each instance compiles to one kind of access. */
static inline __attribute__((always_inline)) vfloat vload_map(const void *map, int64_t i, int bf) {
    return bf ? vload_bf16((const uint16_t *)map + i) : vload((const float *)map + i);
}

static inline __attribute__((always_inline)) void vstore_map(void *map, int64_t i, vfloat v, int bf) {
    if (bf)
        vstore_bf16((uint16_t *)map + i, v);
    else
        vstore((float *)map + i, v);
}

/* c [GEMM_ROWS][n] = a [GEMM_ROWS][K] . b [K][n], n a multiple of VL, with row strides lda, ldb
 * and ldc: register tiles of GEMM_ROWS rows x 2 VL columns (then GEMM_ROWS x VL for a last VL
 * columns), each output summed over k in order, so the result depends neither on how callers
 * split their work nor on the tile's size. The matrix products of attention.c and winograd.c. */
static inline void gemm_rows8(const float *a, int64_t lda, int64_t K, const float *b, int64_t ldb, int64_t n,
                              float *c, int64_t ldc) {
    int64_t j0 = 0;
    for (; j0 + 2 * VL <= n; j0 += 2 * VL) {
        vfloat acc[GEMM_ROWS][2] = {{{0}}};
        for (int64_t k = 0; k < K; k++) {
            const vfloat b0 = vload(b + k * ldb + j0), b1 = vload(b + k * ldb + j0 + VL);
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
            vstore(c + i * ldc + j0 + VL, acc[i][1]);
        }
    }
    for (; j0 < n; j0 += VL) {
        vfloat acc[GEMM_ROWS] = {{0}};
        for (int64_t k = 0; k < K; k++) {
            const vfloat b0 = vload(b + k * ldb + j0);
#pragma GCC unroll 8
            for (int i = 0; i < GEMM_ROWS; i++) acc[i] += a[i * lda + k] * b0;
        }
#pragma GCC unroll 8
        for (int i = 0; i < GEMM_ROWS; i++) vstore(c + i * ldc + j0, acc[i]);
    }
}

#endif

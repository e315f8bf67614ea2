/* Group norm + SiLU over channels-last float32 or bfloat16 maps, forward and backward, two passes
 * each; and over NCHW bfloat16 maps, one pass per group each way (below).
 *
 * Compiled on first use by limner/nn/kernels/__init__.py (cc -O3 -march=native -fopenmp) and
 * called through ctypes with raw pointers; Python checks every shape, dtype and layout first.
 * The maths is that of limner/nn/norms.py (the reference and the test oracle):
 *
 *   forward   z = x * a + b with a = rstd * w and b = bias - mu * a per (sample, channel);
 *             y = SiLU(z) = z * sigmoid(z) (or z without the activation).
 *   backward  g = dL/dz, S1 = sum_hw g, S2 = sum_hw g * (x - mu) per (sample, channel), N
 *             elements per group:
 *             dL/dx = a * g + p * x + q, p = -rstd^2 * sum_group(w * rstd * S2) / N,
 *             q = -p * mu - rstd * sum_group(w * S1) / N; dL/dw = rstd * S2, dL/dbias = S1.
 *
 * x is [B, HW, C] (a channels-last [B, C, H, W] tensor). Statistics are float32 sums over
 * blocks of rows of values shifted close to their mean (so an offset does not cancel them out),
 * accumulated in double; parallel loops split samples (and row blocks in the
 * elementwise passes) with static schedules, and no sum crosses threads, so results do not
 * depend on the thread count. The exponential is a polynomial (range reduction to
 * |r| <= ln(2)/2, degree-7 Taylor series, error below float rounding) that the compiler can
 * vectorise, which the C library's expf is not without -ffast-math.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"

#define ROW_BLOCK 64 /* rows summed in float before adding into the double accumulators */

static inline float sigmoid(float z) { return 1.0f / (1.0f + exp_poly(-z)); }

/* Per-channel sums of (x - k) and (x - k)^2 over the rows of one sample, k = the first row:
 * shifting by a sample value keeps float block sums accurate when |mean| >> std. LOAD widens
 * one stored value to float (the identity for float, a shift for bfloat16). */
#define DEFINE_CHANNEL_SUMS(NAME, T, LOAD)                                                             \
    static void NAME(const T *x, int64_t rows, int64_t C, double *s1, double *s2, float *f1, float *f2) { \
        for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0.0;                                           \
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {                                             \
            int64_t r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;                                \
            for (int64_t c = 0; c < C; c++) f1[c] = f2[c] = 0.0f;                                      \
            for (int64_t r = r0; r < r1; r++) {                                                        \
                const T *row = x + r * C;                                                              \
                _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                  \
                    float v = LOAD(row[c]) - LOAD(x[c]);                                               \
                    f1[c] += v;                                                                        \
                    f2[c] += v * v;                                                                    \
                }                                                                                      \
            }                                                                                          \
            for (int64_t c = 0; c < C; c++) {                                                          \
                s1[c] += f1[c];                                                                        \
                s2[c] += f2[c];                                                                        \
            }                                                                                          \
        }                                                                                              \
    }

static inline float f32_load(float v) { return v; }

DEFINE_CHANNEL_SUMS(channel_sums, float, f32_load)
DEFINE_CHANNEL_SUMS(channel_sums_bf16, uint16_t, bf16_load)

/* Group statistics of one sample from its channel sums s = [S1 | S2] around the shift k [C],
 * and the affine coefficients a, b [C] of that sample; mean, rstd [G]. */
static void sample_coefficients(const float *k, const double *s, int64_t HW, int64_t C, int64_t G, float eps,
                                const float *w, const float *bb, float *a, float *b, float *mean, float *rstd) {
    int64_t n = C / G;
    for (int64_t g = 0; g < G; g++) {
        double count = (double)n * (double)HW, m1 = 0.0, ss = 0.0;
        for (int64_t c = g * n; c < (g + 1) * n; c++) m1 += (double)k[c] * (double)HW + s[c];
        double mu = m1 / count;
        for (int64_t c = g * n; c < (g + 1) * n; c++) { /* sum (x - mu)^2, exactly regrouped */
            double dk = (double)k[c] - mu;
            ss += s[C + c] + 2.0 * dk * s[c] + (double)HW * dk * dk;
        }
        double var = ss / count;
        float rs = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + (double)eps));
        mean[g] = (float)mu;
        rstd[g] = rs;
        for (int64_t c = g * n; c < (g + 1) * n; c++) {
            float ac = rs * w[c];
            a[c] = ac;
            b[c] = bb[c] - (float)mu * ac;
        }
    }
}

#define TASK_ROWS 256 /* rows per task of the elementwise passes */

static inline float f32_store(float v) { return v; }

/* Forward over [B, HW, C] maps of T: per sample, the channel sums around its first row and
 * the coefficients; then the affine map (+ SiLU) over row blocks, computed in float and
 * stored with STORE. weight, bias: [C] (w_per_sample = 0) or [B, C]. Writes y [B, HW, C], the
 * affine coefficients a, b [B, C] and mean, rstd [B, G]. Returns 0, or -1 when out of memory. */
#define DEFINE_GN_FORWARD(NAME, T, LOAD, STORE, SUMS)                                                    \
    int NAME(const T *x, const float *weight, const float *bias, int w_per_sample, int64_t B, int64_t HW,  \
             int64_t C, int64_t G, float eps, int act, T *y, float *a, float *b, float *mean, float *rstd) { \
        int failed = 0;                                                                                    \
        _Pragma("omp parallel for schedule(static) reduction(| : failed)")                                 \
        for (int64_t bi = 0; bi < B; bi++) {                                                               \
            double *s = malloc(sizeof(double) * 2 * C);                                                    \
            float *f = malloc(sizeof(float) * 3 * C);                                                      \
            if (!s || !f) {                                                                                \
                failed = 1;                                                                                \
            } else {                                                                                       \
                const T *xs = x + bi * HW * C;                                                             \
                SUMS(xs, HW, C, s, s + C, f, f + C);                                                       \
                float *k = f + 2 * C; /* the shift of the sums: the first row, widened */                  \
                for (int64_t c = 0; c < C; c++) k[c] = LOAD(xs[c]);                                        \
                int64_t o = w_per_sample ? bi * C : 0;                                                     \
                sample_coefficients(k, s, HW, C, G, eps, weight + o, bias + o, a + bi * C, b + bi * C,     \
                                    mean + bi * G, rstd + bi * G);                                         \
            }                                                                                              \
            free(s);                                                                                       \
            free(f);                                                                                       \
        }                                                                                                  \
        if (failed) return -1;                                                                             \
        int64_t blocks = (HW + TASK_ROWS - 1) / TASK_ROWS;                                                 \
        _Pragma("omp parallel for schedule(static)")                                                       \
        for (int64_t t = 0; t < B * blocks; t++) {                                                         \
            int64_t bi = t / blocks, r0 = (t % blocks) * TASK_ROWS;                                        \
            int64_t r1 = r0 + TASK_ROWS < HW ? r0 + TASK_ROWS : HW;                                        \
            const float *ab = a + bi * C, *bb = b + bi * C;                                                \
            for (int64_t r = r0; r < r1; r++) {                                                            \
                const T *xr = x + (bi * HW + r) * C;                                                       \
                T *yr = y + (bi * HW + r) * C;                                                             \
                if (act) {                                                                                 \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                  \
                        float z = LOAD(xr[c]) * ab[c] + bb[c];                                             \
                        yr[c] = STORE(z * sigmoid(z));                                                     \
                    }                                                                                      \
                } else {                                                                                   \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; c++) yr[c] = STORE(LOAD(xr[c]) * ab[c] + bb[c]); \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        return 0;                                                                                          \
    }

/* float32 forward (training and float32 inference). */
DEFINE_GN_FORWARD(limner_gn_forward, float, f32_load, f32_store, channel_sums)

/* bfloat16 forward (inference): the same two passes with bfloat16 loads and one rounding per
 * output; a, b, mean, rstd are scratch for the caller. */
DEFINE_GN_FORWARD(limner_gn_forward_bf16_cl, uint16_t, bf16_load, bf16_round, channel_sums_bf16)

/* The group step of the backward pass, shared by both layouts. Per channel c of a group, from
 * its sums S1 = sum dL/dz and S2 = sum dL/dz (x - mu): the parameter gradients gw = rstd S2 and
 * gb = S1, and the group's weighted sums A = sum w S1, Bsum = sum w gw (channels in order). */
static inline void channel_backward(double s1, double s2, double rs, float w, float *gw, float *gb, double *A,
                                    double *Bsum) {
    double gxhat = rs * s2;
    *gw = (float)gxhat;
    *gb = (float)s1;
    *A += w * s1;
    *Bsum += w * gxhat;
}

/* Then, over the group's count = n * HW values, dL/dx = a dL/dz + p x + q with these p and q. */
static inline void group_backward(double A, double Bsum, double rs, double mu, double count, float *p, float *q) {
    double pd = -rs * rs * Bsum / count;
    *p = (float)pd;
    *q = (float)(pd * -mu - rs * A / count);
}

/* Backward over [B, HW, C] maps of T. gy: dL/dy; a, b, mean, rstd from the forward. Writes gx
 * (may not alias x or gy) and the per-sample gradients gw, gb [B, C] of the norm's weight and
 * bias (the caller sums them over B for [C] parameters). Pass 1 writes g = dL/dz, in float, to
 * gx itself for float maps (SCRATCH = 0) or to a float scratch map for bfloat16 ones, so that
 * pass 2, dL/dx = a g + p x + q, rounds once. Returns 0, or -1 when out of memory. */
#define DEFINE_GN_BACKWARD(NAME, T, LOAD, STORE, SCRATCH)                                                 \
    int NAME(const T *x, const T *gy, const float *weight, int w_per_sample, const float *a, const float *b, \
             const float *mean, const float *rstd, int64_t B, int64_t HW, int64_t C, int64_t G, int act,   \
             T *gx, float *gw, float *gb) {                                                                \
        int64_t n = C / G;                                                                                 \
        float *pq = malloc(sizeof(float) * 2 * B * C); /* p, q per (sample, channel) */                    \
        float *gs = SCRATCH ? malloc(sizeof(float) * (size_t)(B * HW * C)) : (float *)gx;                  \
        if (!pq || !gs) {                                                                                  \
            free(pq);                                                                                      \
            if (SCRATCH) free(gs);                                                                         \
            return -1;                                                                                     \
        }                                                                                                  \
        int failed = 0;                                                                                    \
        _Pragma("omp parallel for schedule(static) reduction(| : failed)")                                 \
        for (int64_t bi = 0; bi < B; bi++) {                                                               \
            double *s = malloc(sizeof(double) * 2 * C);                                                    \
            float *f = malloc(sizeof(float) * 3 * C);                                                      \
            if (!s || !f) {                                                                                \
                failed = 1;                                                                                \
            } else {                                                                                       \
                const float *ab = a + bi * C, *bb = b + bi * C;                                            \
                float *mu = f + 2 * C; /* group mean per channel */                                        \
                for (int64_t c = 0; c < C; c++) mu[c] = mean[bi * G + c / n];                              \
                /* pass 1: g = dL/dz, with its channel sums S1 = sum g and S2 = sum g (x - mu) */          \
                for (int64_t c = 0; c < 2 * C; c++) s[c] = 0.0;                                            \
                for (int64_t r0 = 0; r0 < HW; r0 += ROW_BLOCK) {                                           \
                    int64_t r1 = r0 + ROW_BLOCK < HW ? r0 + ROW_BLOCK : HW;                                \
                    for (int64_t c = 0; c < 2 * C; c++) f[c] = 0.0f;                                       \
                    for (int64_t r = r0; r < r1; r++) {                                                    \
                        const T *xr = x + (bi * HW + r) * C, *gr = gy + (bi * HW + r) * C;                 \
                        float *out = gs + (bi * HW + r) * C;                                               \
                        _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                              \
                            float g = LOAD(gr[c]), xv = LOAD(xr[c]);                                       \
                            if (act) {                                                                     \
                                float z = xv * ab[c] + bb[c];                                              \
                                float sg = sigmoid(z);                                                     \
                                g = g * sg * (1.0f + z * (1.0f - sg));                                     \
                            }                                                                              \
                            out[c] = g;                                                                    \
                            f[c] += g;                                                                     \
                            f[C + c] += g * (xv - mu[c]);                                                  \
                        }                                                                                  \
                    }                                                                                      \
                    for (int64_t c = 0; c < 2 * C; c++) s[c] += f[c];                                      \
                }                                                                                          \
                const float *w = weight + (w_per_sample ? bi * C : 0);                                     \
                for (int64_t g = 0; g < G; g++) {                                                          \
                    double rs = rstd[bi * G + g], A = 0.0, Bsum = 0.0;                                     \
                    for (int64_t c = g * n; c < (g + 1) * n; c++)                                          \
                        channel_backward(s[c], s[C + c], rs, w[c], gw + bi * C + c, gb + bi * C + c, &A, &Bsum); \
                    float p, q;                                                                            \
                    group_backward(A, Bsum, rs, mean[bi * G + g], (double)n * (double)HW, &p, &q);         \
                    for (int64_t c = g * n; c < (g + 1) * n; c++) {                                        \
                        pq[bi * 2 * C + c] = p;                                                            \
                        pq[bi * 2 * C + C + c] = q;                                                        \
                    }                                                                                      \
                }                                                                                          \
            }                                                                                              \
            free(s);                                                                                       \
            free(f);                                                                                       \
        }                                                                                                  \
        if (!failed) { /* pass 2: dL/dx = a * g + p * x + q */                                             \
            int64_t blocks = (HW + TASK_ROWS - 1) / TASK_ROWS;                                             \
            _Pragma("omp parallel for schedule(static)")                                                   \
            for (int64_t t = 0; t < B * blocks; t++) {                                                     \
                int64_t bi = t / blocks, r0 = (t % blocks) * TASK_ROWS;                                    \
                int64_t r1 = r0 + TASK_ROWS < HW ? r0 + TASK_ROWS : HW;                                    \
                const float *ab = a + bi * C, *p = pq + bi * 2 * C, *q = p + C;                            \
                for (int64_t r = r0; r < r1; r++) {                                                        \
                    const T *xr = x + (bi * HW + r) * C;                                                   \
                    const float *gr = gs + (bi * HW + r) * C;                                              \
                    T *out = gx + (bi * HW + r) * C;                                                       \
                    _Pragma("omp simd") for (int64_t c = 0; c < C; c++)                                    \
                        out[c] = STORE(ab[c] * gr[c] + p[c] * LOAD(xr[c]) + q[c]);                         \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        free(pq);                                                                                          \
        if (SCRATCH) free(gs);                                                                             \
        return failed ? -1 : 0;                                                                            \
    }

/* float32 backward: g goes to gx and pass 2 updates it in place. */
DEFINE_GN_BACKWARD(limner_gn_backward, float, f32_load, f32_store, 0)

/* bfloat16 channels-last backward (bfloat16 autocast training with channels-last maps). */
DEFINE_GN_BACKWARD(limner_gn_backward_bf16_cl, uint16_t, bf16_load, bf16_round, 1)

/* ---- bfloat16, NCHW, forward and backward ------------------------------------------------
 * NCHW bfloat16 maps (the U-Net's layout under bfloat16 autocast with memory_format="contiguous",
 * and its layout before the channels-last backward above existed). Each (sample, group) is one
 * contiguous run of n * HW values, so one task reads
 * it for the statistics and again, from cache, for the affine map and SiLU: one pass over
 * memory instead of the native norm, the per-sample affine map and SiLU as three. Values are
 * widened to float (exact), computed as above and rounded once to the nearest bfloat16 (ties
 * to even, NaN kept), as PyTorch rounds. Tasks never share a sum, so results do not depend on
 * the thread count. The backward pass is local to a (sample, group) too: the gradient through
 * SiLU goes to a float scratch run with its channel sums, then dL/dx = a g + p x + q is
 * rounded once (PyTorch's bfloat16 chain rounds after SiLU's backward and again after the
 * norm's). */

#define SPAN 1024 /* values summed in float before adding into the double accumulators */
#define STACK_FLOATS 4096 /* a backward task's scratch up to this size lives on its stack (16 KiB) */

/* x, y [B, C, HW] bfloat16 bits; weight, bias [C] (w_per_sample = 0) or [B, C] float. a, b
 * [B, C] and mean, rstd [B, G] receive the coefficients for the backward pass, or are all NULL
 * (inference). */
void limner_gn_forward_bf16_nchw(const uint16_t *x, const float *weight, const float *bias, int w_per_sample,
                                 int64_t B, int64_t HW, int64_t C, int64_t G, float eps, int act, uint16_t *y,
                                 float *a, float *b, float *mean, float *rstd) {
    int64_t n = C / G;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < B * G; t++) {
        int64_t bi = t / G, c0 = (t % G) * n, count = n * HW;
        const uint16_t *xg = x + (bi * C + c0) * HW;
        uint16_t *yg = y + (bi * C + c0) * HW;
        float k = bf16_load(xg[0]); /* shift: keeps float span sums accurate when |mean| >> std */
        double s1 = 0.0, s2 = 0.0;
        for (int64_t i0 = 0; i0 < count; i0 += SPAN) {
            int64_t i1 = i0 + SPAN < count ? i0 + SPAN : count;
            float f1 = 0.0f, f2 = 0.0f;
#pragma omp simd simdlen(16) reduction(+ : f1, f2)
            for (int64_t i = i0; i < i1; i++) {
                float v = bf16_load(xg[i]) - k;
                f1 += v;
                f2 += v * v;
            }
            s1 += f1;
            s2 += f2;
        }
        double m = s1 / (double)count, var = s2 / (double)count - m * m;
        double mu = (double)k + m;
        float rs = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + (double)eps));
        if (mean) {
            mean[t] = (float)mu;
            rstd[t] = rs;
        }
        const float *w = weight + (w_per_sample ? bi * C : 0);
        const float *bb = bias + (w_per_sample ? bi * C : 0);
        for (int64_t c = c0; c < c0 + n; c++) {
            float ac = rs * w[c], bc = bb[c] - (float)mu * ac;
            if (a) {
                a[bi * C + c] = ac;
                b[bi * C + c] = bc;
            }
            const uint16_t *xc = xg + (c - c0) * HW;
            uint16_t *yc = yg + (c - c0) * HW;
            if (act) {
#pragma omp simd simdlen(16)
                for (int64_t i = 0; i < HW; i++) {
                    float z = bf16_load(xc[i]) * ac + bc;
                    yc[i] = bf16_round(z * sigmoid(z));
                }
            } else {
#pragma omp simd simdlen(16)
                for (int64_t i = 0; i < HW; i++) yc[i] = bf16_round(bf16_load(xc[i]) * ac + bc);
            }
        }
    }
}

/* Backward of the above. x, gy, gx [B, C, HW] bfloat16 bits (gx may not alias x or gy); a, b,
 * mean, rstd from the forward; weight [C] or [B, C]. Writes the per-sample gradients gw, gb
 * [B, C] of the norm's weight and bias. Returns 0, or -1 when out of memory. */
int limner_gn_backward_bf16_nchw(const uint16_t *x, const uint16_t *gy, const float *weight, int w_per_sample,
                                 const float *a, const float *b, const float *mean, const float *rstd,
                                 int64_t B, int64_t HW, int64_t C, int64_t G, int act,
                                 uint16_t *gx, float *gw, float *gb) {
    int64_t n = C / G;
    int failed = 0;
#pragma omp parallel for schedule(static) reduction(| : failed)
    for (int64_t t = 0; t < B * G; t++) {
        int64_t bi = t / G, c0 = (t % G) * n, count = n * HW;
        float small[STACK_FLOATS]; /* dL/dz of this group: on the stack when it fits */
        float *g = count <= STACK_FLOATS ? small : malloc(sizeof(float) * count);
        if (!g) {
            failed = 1;
            continue;
        }
        const uint16_t *xg = x + (bi * C + c0) * HW, *gyg = gy + (bi * C + c0) * HW;
        const float *w = weight + (w_per_sample ? bi * C : 0);
        float mu = mean[t];
        double rs = rstd[t], A = 0.0, Bsum = 0.0;
        /* pass 1: g through SiLU, S1 = sum g and S2 = sum g (x - mu) per channel */
        for (int64_t c = c0; c < c0 + n; c++) {
            float ac = a[bi * C + c], bc = b[bi * C + c];
            const uint16_t *xc = xg + (c - c0) * HW, *gc = gyg + (c - c0) * HW;
            float *out = g + (c - c0) * HW;
            double s1 = 0.0, s2 = 0.0;
            for (int64_t i0 = 0; i0 < HW; i0 += SPAN) {
                int64_t i1 = i0 + SPAN < HW ? i0 + SPAN : HW;
                float f1 = 0.0f, f2 = 0.0f;
                if (act) {
#pragma omp simd simdlen(16) reduction(+ : f1, f2)
                    for (int64_t i = i0; i < i1; i++) {
                        float xv = bf16_load(xc[i]), z = xv * ac + bc, sg = sigmoid(z);
                        float gv = bf16_load(gc[i]) * sg * (1.0f + z * (1.0f - sg));
                        out[i] = gv;
                        f1 += gv;
                        f2 += gv * (xv - mu);
                    }
                } else {
#pragma omp simd simdlen(16) reduction(+ : f1, f2)
                    for (int64_t i = i0; i < i1; i++) {
                        float gv = bf16_load(gc[i]);
                        out[i] = gv;
                        f1 += gv;
                        f2 += gv * (bf16_load(xc[i]) - mu);
                    }
                }
                s1 += f1;
                s2 += f2;
            }
            channel_backward(s1, s2, rs, w[c], gw + bi * C + c, gb + bi * C + c, &A, &Bsum);
        }
        float p, q;
        group_backward(A, Bsum, rs, mu, (double)count, &p, &q);
        /* pass 2: dL/dx = a g + p x + q, rounded once */
        for (int64_t c = c0; c < c0 + n; c++) {
            float ac = a[bi * C + c];
            const uint16_t *xc = xg + (c - c0) * HW;
            const float *gc = g + (c - c0) * HW;
            uint16_t *out = gx + (bi * C + c) * HW;
#pragma omp simd simdlen(16)
            for (int64_t i = 0; i < HW; i++) out[i] = bf16_round(ac * gc[i] + p * bf16_load(xc[i]) + q);
        }
        if (g != small) free(g);
    }
    return failed ? -1 : 0;
}

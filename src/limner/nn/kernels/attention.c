/* Multi-head scaled dot-product attention over float32 rows, forward and backward.
 *
 * Compiled with the other kernels into one library (see limner/nn/kernels/__init__.py) and called
 * through ctypes with raw pointers; Python checks every shape, dtype and stride first.
 *
 *   forward   S = scale * Q K^T (+ key mask), P = softmax_rows(S), O = P V, and per query row
 *             lse = max_t S + log(sum_t exp(S - max)), kept for the backward pass.
 *   backward  P is recomputed from Q, K and lse (nothing of size Tq x Tk is stored, as in
 *             FlashAttention, Dao et al. 2022, https://arxiv.org/abs/2205.14135), then
 *             dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
 *             dQ = scale * dS K, dK = scale * dS^T Q.
 *
 * Element (b, h, t, j) of an operand X lives at X[b * x_bs + t * x_ts + h * D + j]: heads are D
 * contiguous floats inside a token's row. That is the memory of a channels-last [B, C, H, W]
 * feature map (x_ts = C) and of the qkv projection's output read in place (x_ts = 3C, with K at
 * Q + C and V at Q + 2C), so no head is ever copied out into [B, heads, T, D].
 *
 * Work is split over (sample, head) pairs with a static schedule; every sum is taken inside one
 * pair in a fixed order, so results do not depend on the thread count. The inner loops run over
 * Tk (after packing K^T and V^T per pair) or over D, in vectors of VL floats; the matrix
 * products are gemm_rows8 and the exponential exp_poly (kernel_math.h).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"

#define QB GEMM_ROWS /* query rows per block: the height of gemm_rows8's register tile */

static inline int64_t round16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* dst[j * Tkp + t] = head row t of X, element j (zero for t >= Tk): the D x Tkp transpose. */
static void pack_transposed(const float *x, int64_t ts, int64_t Tk, int64_t Tkp, int64_t D, float *dst) {
    for (int64_t t = 0; t < Tk; t++) {
        const float *row = x + t * ts;
        for (int64_t j = 0; j < D; j++) dst[j * Tkp + t] = row[j];
    }
    for (int64_t j = 0; j < D; j++)
        for (int64_t t = Tk; t < Tkp; t++) dst[j * Tkp + t] = 0.0f;
}

/* Copy nr <= QB head rows of X into dst [QB][D], times scale; rows nr..QB are zero. */
static void pack_rows(const float *x, int64_t ts, int64_t nr, int64_t D, float scale, float *dst) {
    for (int64_t i = 0; i < QB; i++)
        for (int64_t j = 0; j < D; j++) dst[i * D + j] = i < nr ? x[i * ts + j] * scale : 0.0f;
}

/* c [QB][Tkp] = a [QB][D] . bt [D][Tkp]. */
static inline void rows_times_transposed(const float *a, const float *bt, int64_t D, int64_t Tkp, float *c) {
    gemm_rows8(a, D, D, bt, Tkp, Tkp, c, Tkp);
}

/* out [QB][D] = p [QB][Tkp] . X [Tk][D] (head rows of stride ts). */
static inline void rows_times_rows(const float *p, int64_t Tkp, const float *x, int64_t ts, int64_t Tk, int64_t D,
                                   float *out) {
    gemm_rows8(p, Tkp, Tk, x, ts, D, out, D);
}

/* Keys per register tile of accumulate_transposed: KT x 2 VL accumulators (16 vectors with
 * AVX-512's 32 registers, 8 with AVX2's 16). */
#define KT (GEMM_ROWS >= 8 ? 8 : 4)

/* acc [Tk][D] += p^T . g for p [QB][Tkp] and g [QB][D], in tiles of KT keys x 2 VL (each
 * element summed over i in order, whatever KT and VL are). */
static void accumulate_transposed(const float *p, int64_t Tkp, const float *g, int64_t Tk, int64_t D, float *acc) {
    for (int64_t j0 = 0; j0 < D; j0 += 2 * VL) {
        const int wide = j0 + 2 * VL <= D;
        int64_t t0 = 0;
        for (; t0 + KT <= Tk; t0 += KT) {
            vfloat c[KT][2];
#pragma GCC unroll 8
            for (int u = 0; u < KT; u++) {
                c[u][0] = vload(acc + (t0 + u) * D + j0);
                c[u][1] = wide ? vload(acc + (t0 + u) * D + j0 + VL) : c[u][0];
            }
            for (int i = 0; i < QB; i++) {
                const vfloat g0 = vload(g + i * D + j0), g1 = wide ? vload(g + i * D + j0 + VL) : g0;
#pragma GCC unroll 8
                for (int u = 0; u < KT; u++) {
                    const float pu = p[i * Tkp + t0 + u];
                    c[u][0] += pu * g0;
                    c[u][1] += pu * g1;
                }
            }
#pragma GCC unroll 8
            for (int u = 0; u < KT; u++) {
                vstore(acc + (t0 + u) * D + j0, c[u][0]);
                if (wide) vstore(acc + (t0 + u) * D + j0 + VL, c[u][1]);
            }
        }
        for (; t0 < Tk; t0++)
            for (int i = 0; i < QB; i++) {
                const float pt = p[i * Tkp + t0];
                for (int64_t j = j0; j < (wide ? j0 + 2 * VL : j0 + VL); j++) acc[t0 * D + j] += pt * g[i * D + j];
            }
    }
}

/* Turn scores s [QB][Tkp] into probabilities: masked keys (and padding t >= Tk) get 0. With
 * lse == NULL each row is normalised and its log-sum-exp written to lse_out[i] (if given);
 * otherwise p = exp(s - lse[i]) (the backward pass). */
static void probabilities(float *s, int64_t nr, int64_t Tk, int64_t Tkp, const uint8_t *mask, const float *lse,
                          float *lse_out) {
    for (int64_t i = 0; i < QB; i++) {
        float *row = s + i * Tkp;
        if (i >= nr) {
            memset(row, 0, sizeof(float) * Tkp);
            continue;
        }
        if (mask)
            for (int64_t t = 0; t < Tk; t++)
                if (!mask[t]) row[t] = -INFINITY;
        for (int64_t t = Tk; t < Tkp; t++) row[t] = -INFINITY;
        float shift;
        if (lse) {
            shift = lse[i];
        } else {
            shift = -INFINITY;
            for (int64_t t = 0; t < Tk; t++) shift = row[t] > shift ? row[t] : shift;
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < Tkp; t++) {
            const float e = row[t] == -INFINITY ? 0.0f : exp_poly(row[t] - shift);
            row[t] = e;
            sum += e;
        }
        if (!lse) {
            const float inv = 1.0f / sum;
#pragma omp simd
            for (int64_t t = 0; t < Tkp; t++) row[t] *= inv;
            if (lse_out) lse_out[i] = shift + logf(sum);
        }
    }
}

/* Scratch floats one (sample, head) pair needs; pointers into it are laid out by the callers. */
static int64_t scratch_floats(int64_t Tk, int64_t D) {
    const int64_t Tkp = round16(Tk);
    return 4 * D * Tkp + 2 * QB * Tkp + 4 * QB * D;
}

static void forward_pair(const float *q, int64_t q_ts, const float *k, int64_t k_ts, const float *v, int64_t v_ts,
                         float *o, int64_t o_ts, float *lse, int64_t Tq, int64_t Tk, int64_t D, float scale,
                         const uint8_t *mask, float *scratch) {
    const int64_t Tkp = round16(Tk);
    float *kt = scratch, *s = kt + D * Tkp, *qb = s + QB * Tkp, *ob = qb + QB * D;
    pack_transposed(k, k_ts, Tk, Tkp, D, kt);
    for (int64_t r0 = 0; r0 < Tq; r0 += QB) {
        const int64_t nr = r0 + QB < Tq ? QB : Tq - r0;
        pack_rows(q + r0 * q_ts, q_ts, nr, D, scale, qb);
        rows_times_transposed(qb, kt, D, Tkp, s);
        probabilities(s, nr, Tk, Tkp, mask, NULL, lse ? lse + r0 : NULL);
        rows_times_rows(s, Tkp, v, v_ts, Tk, D, ob);
        for (int64_t i = 0; i < nr; i++) memcpy(o + (r0 + i) * o_ts, ob + i * D, sizeof(float) * D);
    }
}

static void backward_pair(const float *q, int64_t q_ts, const float *k, int64_t k_ts, const float *v, int64_t v_ts,
                          const float *o, int64_t o_ts, const float *go, int64_t go_ts, const float *lse, float *dq,
                          int64_t dq_ts, float *dk, int64_t dk_ts, float *dv, int64_t dv_ts, int64_t Tq, int64_t Tk,
                          int64_t D, float scale, const uint8_t *mask, float *scratch) {
    const int64_t Tkp = round16(Tk);
    float *kt = scratch, *vt = kt + D * Tkp, *dk_acc = vt + D * Tkp, *dv_acc = dk_acc + D * Tkp;
    float *p = dv_acc + D * Tkp, *dp = p + QB * Tkp;
    float *qb = dp + QB * Tkp, *gb = qb + QB * D, *qs = gb + QB * D, *dqb = qs + QB * D;
    pack_transposed(k, k_ts, Tk, Tkp, D, kt);
    pack_transposed(v, v_ts, Tk, Tkp, D, vt);
    memset(dk_acc, 0, sizeof(float) * Tkp * D);
    memset(dv_acc, 0, sizeof(float) * Tkp * D);
    for (int64_t r0 = 0; r0 < Tq; r0 += QB) {
        const int64_t nr = r0 + QB < Tq ? QB : Tq - r0;
        pack_rows(q + r0 * q_ts, q_ts, nr, D, scale, qs);
        pack_rows(q + r0 * q_ts, q_ts, nr, D, 1.0f, qb);
        pack_rows(go + r0 * go_ts, go_ts, nr, D, 1.0f, gb);
        rows_times_transposed(qs, kt, D, Tkp, p);
        probabilities(p, nr, Tk, Tkp, mask, lse + r0, NULL);
        rows_times_transposed(gb, vt, D, Tkp, dp);
        accumulate_transposed(p, Tkp, gb, Tk, D, dv_acc);
        for (int64_t i = 0; i < nr; i++) {
            const float *orow = o + (r0 + i) * o_ts, *grow = gb + i * D;
            float delta = 0.0f;
            for (int64_t j = 0; j < D; j++) delta += grow[j] * orow[j];
            float *prow = p + i * Tkp, *dprow = dp + i * Tkp;
#pragma omp simd
            for (int64_t t = 0; t < Tkp; t++) prow[t] = prow[t] * (dprow[t] - delta) * scale;
        }
        /* p now holds dS (scaled; zero in padded rows and columns) */
        rows_times_rows(p, Tkp, k, k_ts, Tk, D, dqb);
        accumulate_transposed(p, Tkp, qb, Tk, D, dk_acc);
        for (int64_t i = 0; i < nr; i++) memcpy(dq + (r0 + i) * dq_ts, dqb + i * D, sizeof(float) * D);
    }
    for (int64_t t = 0; t < Tk; t++) {
        memcpy(dk + t * dk_ts, dk_acc + t * D, sizeof(float) * D);
        memcpy(dv + t * dv_ts, dv_acc + t * D, sizeof(float) * D);
    }
}

/* o (and lse [B, H, Tq] unless NULL) from q, k, v; mask [B, Tk] (nonzero = attend) or NULL.
 * D must be a multiple of 16. Returns 0, or -1 when scratch memory cannot be allocated. */
int limner_attention_forward(const float *q, const float *k, const float *v, float *o, float *lse, int64_t B,
                             int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t q_bs, int64_t q_ts, int64_t k_bs,
                             int64_t k_ts, int64_t v_bs, int64_t v_ts, int64_t o_bs, int64_t o_ts,
                             const uint8_t *mask, float scale) {
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *scratch = malloc(sizeof(float) * (size_t)scratch_floats(Tk, D));
        if (!scratch) failed = 1;
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!scratch) continue;
            const int64_t b = bh / H, h = bh % H;
            forward_pair(q + b * q_bs + h * D, q_ts, k + b * k_bs + h * D, k_ts, v + b * v_bs + h * D, v_ts,
                         o + b * o_bs + h * D, o_ts, lse ? lse + bh * Tq : NULL, Tq, Tk, D, scale,
                         mask ? mask + b * Tk : NULL, scratch);
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

/* dq, dk, dv from go = dL/do and the forward's q, k, v, o, lse (strides as in the forward; each
 * gradient has its own strides and the operands' head layout). D must be a multiple of 16.
 * Returns 0, or -1 when scratch memory cannot be allocated. */
int limner_attention_backward(const float *q, const float *k, const float *v, const float *o, const float *go,
                              const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t H, int64_t Tq,
                              int64_t Tk, int64_t D, int64_t q_bs, int64_t q_ts, int64_t k_bs, int64_t k_ts,
                              int64_t v_bs, int64_t v_ts, int64_t o_bs, int64_t o_ts, int64_t go_bs, int64_t go_ts,
                              int64_t dq_bs, int64_t dq_ts, int64_t dk_bs, int64_t dk_ts, int64_t dv_bs,
                              int64_t dv_ts, const uint8_t *mask, float scale) {
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *scratch = malloc(sizeof(float) * (size_t)scratch_floats(Tk, D));
        if (!scratch) failed = 1;
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!scratch) continue;
            const int64_t b = bh / H, h = bh % H, off = h * D;
            backward_pair(q + b * q_bs + off, q_ts, k + b * k_bs + off, k_ts, v + b * v_bs + off, v_ts,
                          o + b * o_bs + off, o_ts, go + b * go_bs + off, go_ts, lse + bh * Tq,
                          dq + b * dq_bs + off, dq_ts, dk + b * dk_bs + off, dk_ts, dv + b * dv_bs + off, dv_ts,
                          Tq, Tk, D, scale, mask ? mask + b * Tk : NULL, scratch);
        }
        free(scratch);
    }
    return failed ? -1 : 0;
}

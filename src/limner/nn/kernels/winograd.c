/* 3x3 convolutions (stride 1, zero padding 1) over channels-last float32 maps by Winograd's
 * minimal filtering F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray 2016,
 * https://arxiv.org/abs/1509.09308): each m x m output tile is A^T [U . V] A, with V = B^T d B the
 * transformed (m+2) x (m+2) input patch and U = G g G^T the transformed 3x3 filter, so a tile costs
 * (m+2)^2 multiply-adds per channel pair instead of 9 m^2 (16 instead of 36, 36 instead of 144).
 * The products U_p . V_p over channels are matrix products, done for blocks of tiles that stay in
 * the L1 cache: transform a block's input, multiply, transform back (the fused CPU scheme of Jia
 * et al. 2018, https://arxiv.org/abs/1803.10986).
 *
 *   forward          y = conv(x, w) + bias: limner_wino_forward_mixed with U from w
 *                    (limner_wino_filter, limner_wino4_filter).
 *   gradient of x    dx = conv(dy, w rotated by 180 degrees, in/out channels swapped): the same
 *                    kernel with U from that filter (limner_wino_filter with rotate).
 *   gradient of w    dU_p = V_p^T dM_p summed over every tile, dM = A dy A^T the gradient of the
 *                    transformed products, then dw = G^T dU G: limner_wino_tiles writes V and
 *                    dM for all tiles ([P][tiles][channels]), the caller multiplies (one batched
 *                    matrix product with the tiles as the summed dimension) and transforms back.
 *                    An earlier version summed over tiles block by block inside this kernel, so
 *                    the [P][Cin][Cout] sums left the cache for 128 channels (2.5x slower than
 *                    oneDNN); with both transforms written out once, the product is a plain
 *                    large matrix product that runs near the CPU's peak.
 *
 * x is [N, H, W, C] (a channels-last [N, C, H, W] tensor) with H and W multiples of m; C and the
 * output channel count are multiples of 16; U is [(m+2)^2][Cin][Cout] with p = (m+2) * row +
 * column of the transform. Both tile sizes share one driver (winograd_forward: blocks of tiles,
 * transform in, P matrix products by gemm_rows8, transform out) and differ in their transforms:
 * F(2x2, 3x3)'s first, then F(4x4, 3x3)'s. Work is split over blocks of tiles, each done by one
 * thread with no sum across threads, so no result depends on the thread count.
 *
 * The forward reads x and writes y as floats or as bfloat16 values (limner_wino_forward_mixed, for
 * bfloat16 autocast): only the loads and stores differ (a bfloat16 is widened exactly, a result
 * rounded once, to nearest with ties to even), so a bfloat16 result is the float result rounded.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_math.h"

#define PAD 16 /* floats between the planes of a block, so they are not 4 KiB apart (~10%) */
#define ROWS GEMM_ROWS /* tiles per row block of the matrix products (gemm_rows8) */
#define BLOCK_BYTES 49152

/* Tiles per block for P = (m+2)^2 transform points, so that a block's transformed input and
 * output (P x tiles x channels floats each) take about 48 KiB and stay in L1 (the filter panels
 * are read from L2): larger blocks were up to 1.5x slower for 32 channels. */
static int64_t block_tiles(int P, int64_t Cin, int64_t Cout) {
    int64_t nt = BLOCK_BYTES / (4 * P * (Cin + Cout));
    nt = nt < ROWS ? ROWS : (nt > 64 ? 64 : nt);
    return nt - nt % ROWS;
}

/* Where tile t of an m x m tiling (TH x TW tiles per sample) lies: sample n, top-left output
 * pixel (oy, ox). */
static inline void tile_origin(int64_t t, int m, int64_t TH, int64_t TW, int64_t *n, int64_t *oy, int64_t *ox) {
    *n = t / (TH * TW);
    const int64_t r = t % (TH * TW);
    *oy = m * (r / TW);
    *ox = m * (r % TW);
}

/* Step (n, oy, ox) to the next m x m tile of H x W maps, row by row. */
static inline void next_tile(int m, int64_t H, int64_t W, int64_t *n, int64_t *oy, int64_t *ox) {
    if ((*ox += m) == W) {
        *ox = 0;
        if ((*oy += m) == H) {
            *oy = 0;
            (*n)++;
        }
    }
}

/* B^T d B of a 4x4 patch of 16-channel vectors, stored to V + p * plane (p = 4 * row + col). */
static inline void transform_patch(vfloat d[4][4], float *out, int64_t plane) {
    vfloat r[4][4]; /* B^T d */
    for (int b = 0; b < 4; b++) {
        r[0][b] = d[0][b] - d[2][b];
        r[1][b] = d[1][b] + d[2][b];
        r[2][b] = d[2][b] - d[1][b];
        r[3][b] = d[1][b] - d[3][b];
    }
    for (int a = 0; a < 4; a++) { /* (B^T d) B */
        float *o = out + (4 * a) * plane;
        vstore(o, r[a][0] - r[a][2]);
        vstore(o + plane, r[a][1] + r[a][2]);
        vstore(o + 2 * plane, r[a][2] - r[a][1]);
        vstore(o + 3 * plane, r[a][1] - r[a][3]);
    }
}

/* V[p][i][c] (planes `plane` floats apart) for tiles t0 .. t0+nt of x, a map of floats (bf = 0)
 * or of bfloat16 values (bf = 1). */
static inline __attribute__((always_inline)) void input_transform_as(const void *x, int64_t H, int64_t W, int64_t C,
                                                                     int64_t TH, int64_t TW, int64_t t0, int64_t nt,
                                                                     int64_t plane, float *V, int bf) {
    int64_t n, oy, ox;
    tile_origin(t0, 2, TH, TW, &n, &oy, &ox);
    for (int64_t i = 0; i < nt; i++) {
        const int64_t xn = n * H * W * C;
        if (oy >= 1 && oy + 2 < H && ox >= 1 && ox + 2 < W) { /* interior: no padding */
            const int64_t p0 = xn + ((oy - 1) * W + ox - 1) * C;
            for (int64_t c = 0; c < C; c += VL) {
                vfloat d[4][4];
                for (int a = 0; a < 4; a++)
                    for (int b = 0; b < 4; b++) d[a][b] = vload_map(x, p0 + (a * W + b) * C + c, bf);
                transform_patch(d, V + i * C + c, plane);
            }
        } else {
            for (int64_t c = 0; c < C; c += VL) {
                vfloat d[4][4];
                for (int a = 0; a < 4; a++) {
                    const int64_t yy = oy - 1 + a;
                    for (int b = 0; b < 4; b++) {
                        const int64_t xx = ox - 1 + b;
                        d[a][b] = (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                      ? vload_map(x, xn + (yy * W + xx) * C + c, bf)
                                      : (vfloat){0};
                    }
                }
                transform_patch(d, V + i * C + c, plane);
            }
        }
        next_tile(2, H, W, &n, &oy, &ox);
    }
}

/* c [rows][Cout] = a [rows][K] . b [K][Cout] for rows a multiple of ROWS, Cout of 16. */
static void gemm_rows(const float *a, int64_t rows, int64_t K, const float *b, int64_t Cout, float *c) {
    for (int64_t i0 = 0; i0 < rows; i0 += ROWS) gemm_rows8(a + i0 * K, K, K, b, Cout, Cout, c + i0 * Cout, Cout);
}

/* y tiles t0 .. t0+nt from M[p][i][co] (planes `plane` floats apart) (+ bias), y a map of floats
 * (bf = 0) or of bfloat16 values (bf = 1, each output rounded once). */
static inline __attribute__((always_inline)) void output_transform_as(const float *M, int64_t plane, int64_t Cout,
                                                                      const float *bias, int64_t H, int64_t W,
                                                                      int64_t TH, int64_t TW, int64_t t0, int64_t nt,
                                                                      void *y, int bf) {
    int64_t n, oy, ox;
    tile_origin(t0, 2, TH, TW, &n, &oy, &ox);
    for (int64_t i = 0; i < nt; i++) {
        const int64_t yn = n * H * W * Cout;
        for (int64_t c = 0; c < Cout; c += VL) {
            vfloat s[2][4]; /* A^T m */
            for (int b = 0; b < 4; b++) {
                const float *m = M + b * plane + i * Cout + c;
                const vfloat m0 = vload(m), m1 = vload(m + 4 * plane), m2 = vload(m + 8 * plane),
                          m3 = vload(m + 12 * plane);
                s[0][b] = m0 + m1 + m2;
                s[1][b] = m1 - m2 - m3;
            }
            const vfloat bv = bias ? vload(bias + c) : (vfloat){0};
            for (int a = 0; a < 2; a++) { /* (A^T m) A */
                const int64_t out = yn + ((oy + a) * W + ox) * Cout + c;
                vstore_map(y, out, s[a][0] + s[a][1] + s[a][2] + bv, bf);
                vstore_map(y, out + Cout, s[a][1] - s[a][2] - s[a][3] + bv, bf);
            }
        }
        next_tile(2, H, W, &n, &oy, &ox);
    }
}

typedef void (*input_fn)(const void *x, int64_t H, int64_t W, int64_t C, int64_t TH, int64_t TW, int64_t t0,
                         int64_t nt, int64_t plane, float *V);
typedef void (*output_fn)(const float *M, int64_t plane, int64_t Cout, const float *bias, int64_t H, int64_t W,
                          int64_t TH, int64_t TW, int64_t t0, int64_t nt, void *y);

/* One input_fn and output_fn per transform and map type: NAME_f32 for floats, NAME_bf16 for
 * bfloat16 values (widened on load, rounded once on store; the arithmetic is float either way). */
#define DEFINE_INPUT(name, impl, bf)                                                                  \
    static void name(const void *x, int64_t H, int64_t W, int64_t C, int64_t TH, int64_t TW, int64_t t0, \
                     int64_t nt, int64_t plane, float *V) {                                           \
        impl(x, H, W, C, TH, TW, t0, nt, plane, V, bf);                                               \
    }
#define DEFINE_OUTPUT(name, impl, bf)                                                                 \
    static void name(const float *M, int64_t plane, int64_t Cout, const float *bias, int64_t H, int64_t W, \
                     int64_t TH, int64_t TW, int64_t t0, int64_t nt, void *y) {                        \
        impl(M, plane, Cout, bias, H, W, TH, TW, t0, nt, y, bf);                                      \
    }
DEFINE_INPUT(input_transform_f32, input_transform_as, 0)
DEFINE_INPUT(input_transform_bf16, input_transform_as, 1)
DEFINE_OUTPUT(output_transform_f32, output_transform_as, 0)
DEFINE_OUTPUT(output_transform_bf16, output_transform_as, 1)

/* y = conv3x3(x, w) + bias by F(m x m, 3x3) with P = (m+2)^2 transform points, the transforms
 * given: per block of tiles, the input transform, P matrix products with U [P][Cin][Cout], the
 * output transform. Returns 0, or -1 when scratch memory cannot be allocated. */
static int winograd_forward(int m, input_fn input, output_fn output, const void *x, const float *U,
                            const float *bias, void *y, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Cout) {
    const int P = (m + 2) * (m + 2);
    const int64_t TH = H / m, TW = W / m, T = N * TH * TW, NT = block_tiles(P, Cin, Cout);
    const int64_t blocks = (T + NT - 1) / NT;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *V = malloc(sizeof(float) * (size_t)(P * (NT * (Cin + Cout) + 2 * PAD)));
        if (!V) failed = 1;
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < blocks; blk++) {
            if (!V) continue;
            const int64_t t0 = blk * NT, nt = t0 + NT <= T ? NT : T - t0;
            const int64_t nt_pad = (nt + ROWS - 1) / ROWS * ROWS;
            const int64_t vplane = nt_pad * Cin + PAD, mplane = nt_pad * Cout + PAD;
            float *M = V + P * vplane;
            input(x, H, W, Cin, TH, TW, t0, nt, vplane, V);
            for (int64_t i = nt; i < nt_pad; i++) /* zero rows up to the register tile's height */
                for (int p = 0; p < P; p++) memset(V + p * vplane + i * Cin, 0, sizeof(float) * Cin);
            for (int p = 0; p < P; p++)
                gemm_rows(V + p * vplane, nt_pad, Cin, U + p * Cin * Cout, Cout, M + p * mplane);
            output(M, mplane, Cout, bias, H, W, TH, TW, t0, nt, y);
        }
        free(V);
    }
    return failed ? -1 : 0;
}

/* k [3][3] = filter (a, b .. b+15) of wt [A][3][3][B], turned by 180 degrees with rotate. */
static inline void load_filter(const float *wt, int64_t a, int64_t b, int64_t B, int rotate, vfloat k[3][3]) {
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            const int ii = rotate ? 2 - i : i, jj = rotate ? 2 - j : j;
            k[i][j] = vload(wt + ((a * 3 + ii) * 3 + jj) * B + b);
        }
}

/* U [16][A][B] = G k G^T for the filters k of wt [A][3][3][B] (B a multiple of 16), each turned
 * by 180 degrees first with rotate. The caller lays out wt: w [Cout][Cin][3][3] permuted to
 * [Cin][3][3][Cout] gives the forward's U [16][Cin][Cout]; permuted to [Cout][3][3][Cin] with
 * rotate, the input gradient's U [16][Cout][Cin] (limner_wino_forward_mixed then maps Cout channels
 * to Cin). Vectorised over B. */
void limner_wino_filter(const float *wt, float *U, int64_t A, int64_t B, int rotate) {
    const int64_t plane = A * B;
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < A; a++)
        for (int64_t b = 0; b < B; b += VL) {
            vfloat k[3][3], t[4][3];
            load_filter(wt, a, b, B, rotate, k);
            for (int j = 0; j < 3; j++) { /* G k: rows k0, (k0+k1+k2)/2, (k0-k1+k2)/2, k2 */
                t[0][j] = k[0][j];
                t[1][j] = 0.5f * (k[0][j] + k[1][j] + k[2][j]);
                t[2][j] = 0.5f * (k[0][j] - k[1][j] + k[2][j]);
                t[3][j] = k[2][j];
            }
            for (int r = 0; r < 4; r++) { /* (G k) G^T, the same combination over columns */
                float *out = U + (4 * r) * plane + a * B + b;
                vstore(out, t[r][0]);
                vstore(out + plane, 0.5f * (t[r][0] + t[r][1] + t[r][2]));
                vstore(out + 2 * plane, 0.5f * (t[r][0] - t[r][1] + t[r][2]));
                vstore(out + 3 * plane, t[r][2]);
            }
        }
}

/* ---- F(4x4, 3x3): 6x6 input patches, 36 products per 4x4 output tile (2.25 per output against
 * F(2x2, 3x3)'s 4 and the direct method's 9), with larger transform constants, so about ten
 * times the rounding error of F(2x2, 3x3) (still ~1e-6 of the output's scale). */

/* out = B^T in for the 6-point transform (points 0, +-1, +-2 and infinity). */
static inline void bt6(const vfloat d[6], vfloat r[6]) {
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = d[3] + d[4] - 4.0f * (d[1] + d[2]);
    r[2] = d[4] - d[3] + 4.0f * (d[1] - d[2]);
    r[3] = d[4] - d[2] + 2.0f * (d[3] - d[1]);
    r[4] = d[4] - d[2] + 2.0f * (d[1] - d[3]);
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

/* out = A^T in: 6 products to 4 outputs. */
static inline void at6(const vfloat m[6], vfloat o[4]) {
    const vfloat s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    o[0] = m[0] + s12 + s34;
    o[1] = d12 + 2.0f * d34;
    o[2] = s12 + 4.0f * s34;
    o[3] = d12 + 8.0f * d34 + m[5];
}

/* V[p][i][c] (planes `plane` floats apart, p = 6 * row + column) for tiles t0 .. t0+nt of x, a
 * map of floats (bf = 0) or of bfloat16 values (bf = 1). */
static inline __attribute__((always_inline)) void input_transform4_as(const void *x, int64_t H, int64_t W, int64_t C,
                                                                      int64_t TH, int64_t TW, int64_t t0, int64_t nt,
                                                                      int64_t plane, float *V, int bf) {
    int64_t n, oy, ox;
    tile_origin(t0, 4, TH, TW, &n, &oy, &ox);
    for (int64_t i = 0; i < nt; i++) {
        const int64_t xn = n * H * W * C;
        const int interior = oy >= 1 && oy + 4 < H && ox >= 1 && ox + 4 < W;
        for (int64_t c = 0; c < C; c += VL) {
            vfloat d[6][6], t[6][6], col[6], out[6];
            for (int a = 0; a < 6; a++) {
                const int64_t yy = oy - 1 + a;
                for (int b = 0; b < 6; b++) {
                    const int64_t xx = ox - 1 + b;
                    d[a][b] = (interior || (yy >= 0 && yy < H && xx >= 0 && xx < W))
                                  ? vload_map(x, xn + (yy * W + xx) * C + c, bf)
                                  : (vfloat){0};
                }
            }
            for (int b = 0; b < 6; b++) { /* B^T d, column by column */
                for (int a = 0; a < 6; a++) col[a] = d[a][b];
                bt6(col, out);
                for (int a = 0; a < 6; a++) t[a][b] = out[a];
            }
            for (int a = 0; a < 6; a++) { /* (B^T d) B, row by row */
                bt6(t[a], out);
                float *o = V + (6 * a) * plane + i * C + c;
                for (int b = 0; b < 6; b++) vstore(o + b * plane, out[b]);
            }
        }
        next_tile(4, H, W, &n, &oy, &ox);
    }
}

/* y tiles t0 .. t0+nt from M[p][i][co] (planes `plane` floats apart) (+ bias), y a map of floats
 * (bf = 0) or of bfloat16 values (bf = 1, each output rounded once). */
static inline __attribute__((always_inline)) void output_transform4_as(const float *M, int64_t plane, int64_t Cout,
                                                                       const float *bias, int64_t H, int64_t W,
                                                                       int64_t TH, int64_t TW, int64_t t0, int64_t nt,
                                                                       void *y, int bf) {
    int64_t n, oy, ox;
    tile_origin(t0, 4, TH, TW, &n, &oy, &ox);
    for (int64_t i = 0; i < nt; i++) {
        const int64_t yn = n * H * W * Cout;
        for (int64_t c = 0; c < Cout; c += VL) {
            vfloat s[4][6], col[6], out[4];
            for (int b = 0; b < 6; b++) { /* A^T m, column by column */
                for (int a = 0; a < 6; a++) col[a] = vload(M + (6 * a + b) * plane + i * Cout + c);
                at6(col, out);
                for (int a = 0; a < 4; a++) s[a][b] = out[a];
            }
            const vfloat bv = bias ? vload(bias + c) : (vfloat){0};
            for (int a = 0; a < 4; a++) { /* (A^T m) A, row by row */
                at6(s[a], out);
                const int64_t o = yn + ((oy + a) * W + ox) * Cout + c;
                for (int b = 0; b < 4; b++) vstore_map(y, o + b * Cout, out[b] + bv, bf);
            }
        }
        next_tile(4, H, W, &n, &oy, &ox);
    }
}

DEFINE_INPUT(input_transform4_f32, input_transform4_as, 0)
DEFINE_INPUT(input_transform4_bf16, input_transform4_as, 1)
DEFINE_OUTPUT(output_transform4_f32, output_transform4_as, 0)
DEFINE_OUTPUT(output_transform4_bf16, output_transform4_as, 1)

/* y = conv3x3(x, w) + bias by F(m x m, 3x3), m = 2 (U [16][Cin][Cout], limner_wino_filter) or
 * m = 4 (H and W multiples of 4, U [36][Cin][Cout], limner_wino4_filter); bias may be NULL. x and
 * y are each a map of floats or of bfloat16 values (x_bf16, y_bf16): bfloat16 inputs are widened
 * exactly, the transforms and products are float, and a bfloat16 output is rounded once at the
 * end, so the result is the float convolution of the bfloat16 input, rounded (bfloat16 autocast,
 * limner/nn/conv.py). Returns 0, or -1 when scratch memory cannot be allocated. */
int limner_wino_forward_mixed(int m, const void *x, int x_bf16, const float *U, const float *bias, void *y,
                              int y_bf16, int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t Cout) {
    const input_fn input = m == 2 ? (x_bf16 ? input_transform_bf16 : input_transform_f32)
                                  : (x_bf16 ? input_transform4_bf16 : input_transform4_f32);
    const output_fn output = m == 2 ? (y_bf16 ? output_transform_bf16 : output_transform_f32)
                                    : (y_bf16 ? output_transform4_bf16 : output_transform4_f32);
    return winograd_forward(m, input, output, x, U, bias, y, N, H, W, Cin, Cout);
}

/* U [36][A][B] = G k G^T (G the 6x3 filter transform) for the filters of wt [A][3][3][B], laid
 * out and rotated as in limner_wino_filter. */
void limner_wino4_filter(const float *wt, float *U, int64_t A, int64_t B, int rotate) {
    const int64_t plane = A * B;
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < A; a++)
        for (int64_t b = 0; b < B; b += VL) {
            vfloat k[3][3], t[6][3];
            load_filter(wt, a, b, B, rotate, k);
            for (int j = 0; j < 3; j++) { /* G k */
                t[0][j] = k[0][j] / 4.0f;
                t[1][j] = -(k[0][j] + k[1][j] + k[2][j]) / 6.0f;
                t[2][j] = -(k[0][j] - k[1][j] + k[2][j]) / 6.0f;
                t[3][j] = k[0][j] / 24.0f + k[1][j] / 12.0f + k[2][j] / 6.0f;
                t[4][j] = k[0][j] / 24.0f - k[1][j] / 12.0f + k[2][j] / 6.0f;
                t[5][j] = k[2][j];
            }
            for (int r = 0; r < 6; r++) { /* (G k) G^T */
                float *out = U + (6 * r) * plane + a * B + b;
                const vfloat k0 = t[r][0], k1 = t[r][1], k2 = t[r][2];
                vstore(out, k0 / 4.0f);
                vstore(out + plane, -(k0 + k1 + k2) / 6.0f);
                vstore(out + 2 * plane, -(k0 - k1 + k2) / 6.0f);
                vstore(out + 3 * plane, k0 / 24.0f + k1 / 12.0f + k2 / 6.0f);
                vstore(out + 4 * plane, k0 / 24.0f - k1 / 12.0f + k2 / 6.0f);
                vstore(out + 5 * plane, k2);
            }
        }
}

/* ---- The filter gradient's transforms over every tile: V [P][T][C] of x (the forward's input
 * transform) and dM [P][T][C] = A dy A^T of the output gradient (T = N * H/m * W/m tiles in the
 * forward's order). */

/* A d of a column of an m-tall output-gradient tile to m+2 values: F(2x2, 3x3)'s A is the
 * transpose of A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; F(4x4, 3x3)'s of at6's. */
static inline void a4(const vfloat d[2], vfloat r[4]) {
    r[0] = d[0];
    r[1] = d[0] + d[1];
    r[2] = d[0] - d[1];
    r[3] = -d[1];
}

static inline void a6(const vfloat d[4], vfloat r[6]) {
    const vfloat e02 = d[0] + d[2], o13 = d[1] + d[3], e4 = d[0] + 4.0f * d[2], o8 = 2.0f * d[1] + 8.0f * d[3];
    r[0] = d[0];
    r[1] = e02 + o13;
    r[2] = e02 - o13;
    r[3] = e4 + o8;
    r[4] = e4 - o8;
    r[5] = d[3];
}

/* dM[p][i][c] (planes `plane` floats apart) = (A dy A^T)_p for tiles t0 .. t0+nt of dy. */
static void grad_transform(int m, const float *dy, int64_t H, int64_t W, int64_t C, int64_t TH, int64_t TW,
                           int64_t t0, int64_t nt, int64_t plane, float *dM) {
    const int q = m + 2;
    int64_t n, oy, ox;
    tile_origin(t0, m, TH, TW, &n, &oy, &ox);
    for (int64_t i = 0; i < nt; i++) {
        const float *yn = dy + n * H * W * C;
        for (int64_t c = 0; c < C; c += VL) {
            vfloat d[4][4], t[6][4], col[4], out[6];
            for (int a = 0; a < m; a++)
                for (int b = 0; b < m; b++) d[a][b] = vload(yn + ((oy + a) * W + ox + b) * C + c);
            for (int b = 0; b < m; b++) { /* A d, column by column */
                for (int a = 0; a < m; a++) col[a] = d[a][b];
                if (m == 2) a4(col, out); else a6(col, out);
                for (int a = 0; a < q; a++) t[a][b] = out[a];
            }
            for (int a = 0; a < q; a++) { /* (A d) A^T, row by row */
                if (m == 2) a4(t[a], out); else a6(t[a], out);
                float *o = dM + (q * a) * plane + i * C + c;
                for (int b = 0; b < q; b++) vstore(o + b * plane, out[b]);
            }
        }
        next_tile(m, H, W, &n, &oy, &ox);
    }
}

/* V [P][T][C] from x [N][H][W][C] and dM [P][T][Co] from dy [N][H][W][Co] for F(m x m, 3x3),
 * m = 2 or 4; every tile by one thread, no sums, so the result is independent of the thread
 * count. */
void limner_wino_tiles(int m, const float *x, const float *dy, float *V, float *dM, int64_t N, int64_t H,
                       int64_t W, int64_t C, int64_t Co) {
    const int64_t TH = H / m, TW = W / m, T = N * TH * TW, NT = 32;
    const int64_t blocks = (T + NT - 1) / NT;
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t t0 = blk * NT, nt = t0 + NT <= T ? NT : T - t0;
        if (m == 2)
            input_transform_f32(x, H, W, C, TH, TW, t0, nt, T * C, V + t0 * C);
        else
            input_transform4_f32(x, H, W, C, TH, TW, t0, nt, T * C, V + t0 * C);
        grad_transform(m, dy, H, W, Co, TH, TW, t0, nt, T * Co, dM + t0 * Co);
    }
}

/* dw [3][3][K] = G^T dU G for dU [q][q][K] (q = m + 2; K = Cin * Cout, a multiple of 16), G the
 * forward's filter transform (limner_wino_filter's for m = 2, limner_wino4_filter's for m = 4). */
void limner_wino_filter_grad(int m, const float *dU, float *dw, int64_t K) {
    static const float G2[4][3] = {{1.0f, 0.0f, 0.0f}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0.0f, 0.0f, 1.0f}};
    static const float G4[6][3] = {{1.0f / 4, 0.0f, 0.0f},         {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                                   {-1.0f / 6, 1.0f / 6, -1.0f / 6}, {1.0f / 24, 1.0f / 12, 1.0f / 6},
                                   {1.0f / 24, -1.0f / 12, 1.0f / 6}, {0.0f, 0.0f, 1.0f}};
    const int q = m + 2;
    const float(*G)[3] = m == 2 ? G2 : G4;
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < K; k += VL) {
        vfloat t[3][6];
        for (int a = 0; a < 3; a++) /* G^T dU */
            for (int j = 0; j < q; j++) {
                vfloat acc = (vfloat){0};
                for (int i = 0; i < q; i++)
                    if (G[i][a] != 0.0f) acc += G[i][a] * vload(dU + (i * q + j) * K + k);
                t[a][j] = acc;
            }
        for (int a = 0; a < 3; a++) /* (G^T dU) G */
            for (int b = 0; b < 3; b++) {
                vfloat acc = (vfloat){0};
                for (int j = 0; j < q; j++)
                    if (G[j][b] != 0.0f) acc += G[j][b] * t[a][j];
                vstore(dw + (a * 3 + b) * K + k, acc);
            }
    }
}

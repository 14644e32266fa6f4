/* Mixture-of-experts feed-forward with SwiGLU experts (as ops/moe.py `fused_moe`),
 * float32 activations, float32 or bfloat16 expert weights.
 *
 *   hidden [T, H] (row stride of its own), w13 [E, 2I, H] (gate rows, then up rows),
 *   w2 [E, H, I], topk_weights [T, k] float32, topk_ids [T, k] int32;
 *   out[t] = sum over j = 0..k-1 of topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t]),
 *   expert_e(x) = w2[e] @ (silu(w13[e][:I] @ x) * (w13[e][I:] @ x)).
 *
 * The T * k (token, slot) pairs are grouped by expert (a stable counting sort), so
 * each expert's weights are read once per call for all of its rows. Three phases,
 * each an OpenMP loop over independent work items:
 *   1. (expert, block of 16 intermediate columns): the gate and up dot products of
 *      the expert's rows into gu [T * k, 2I] (rows in group order), then
 *      silu(gate) * up over the gate half (the activation, in place);
 *   2. (expert, block of 16 output columns): activation rows times w2[e] into
 *      y [T * k, H] (rows in pair order t * k + j);
 *   3. (token): out[t] = w[t, 0] * y[t, 0] + w[t, 1] * y[t, 1] + ... in slot order.
 * Within an item, each group of weight rows is multiplied by every row of the
 * expert in register tiles (weight rows x token rows), so the weights stay in cache
 * while the rows stream past.
 *
 * Every output value is one dot product summed in one fixed order (16 lanes along
 * the reduced dimension, the lanes added pairwise, then the scalar tail), whichever
 * tile computes it and whatever else is in the batch: a token's result does not
 * depend on the other tokens of the call.
 *
 * Returns 0, or -1 when a topk id is outside 0..E-1 (nothing is written then).
 */
#include <stdint.h>
#include <string.h>

#include "vec.h"

#define BLOCK 16 /* intermediate (phase 1) or output (phase 2) columns per work item */
_Static_assert(BLOCK == W, "phase 1 applies silu to one vector of BLOCK columns");
/* Register tiles: ROWS token rows x COLS weight rows of accumulators, and one token
 * row x COLS1 weight rows for the rows left over (decode: one row per expert). Each
 * vf is one AVX-512 register or two AVX2 registers. */
#if defined(__AVX512F__)
#define ROWS 4
#define COLS 4
#define COLS1 8
#else
#define ROWS 2
#define COLS 2
#define COLS1 4
#endif
#define WROWS (COLS1 > COLS ? COLS1 : COLS) /* weight rows per pass over the rows */
_Static_assert(WROWS % COLS == 0, "a pass is whole tiles");

_Static_assert(sizeof(void *) == sizeof(int64_t), "row pointers live in int64 scratch");

/* Full unrolling of the tile loops (constant bounds), so the accumulators are
 * registers. */
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* vh, vu and load_bf16 come from vec.h */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The 16 lanes added pairwise: (0..7 + 8..15), then 4 + 4, then 2 + 2, then 1 + 1. */
static inline float lane_sum(vf v) {
    v8 lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    const v8 a = lo + hi;
    v4 a_lo, a_hi;
    memcpy(&a_lo, &a, sizeof a_lo);
    memcpy(&a_hi, (const char *)&a + sizeof a_lo, sizeof a_hi);
    const v4 b = a_lo + a_hi;
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* 16 weights from column `col` of row `row` (float32 or bfloat16 rows of `len`). */
static inline vf wload(const void *w, int64_t row, int64_t len, int64_t col, const int bf16) {
    if (bf16) return load_bf16((const uint16_t *)w + row * len + col);
    return load((const float *)w + row * len + col);
}

static inline float wscalar(const void *w, int64_t row, int64_t len, int64_t col,
                            const int bf16) {
    if (bf16) return bf16_to_float(((const uint16_t *)w)[row * len + col]);
    return ((const float *)w)[row * len + col];
}

/* out[r][c] = dot(x[r], weight row wrows[c]) over len, r < R, c < C. Inlined with
 * constant R, C and bf16, so the R * C accumulators stay in registers. */
static inline __attribute__((always_inline)) void dot_tile(
    const float *const *x, const int R, const void *w, const int64_t *wrows, const int C,
    int64_t len, const int bf16, float out[ROWS][WROWS]) {
    vf acc[ROWS][WROWS];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = splat(0.0f);
    int64_t d = 0;
    for (; d + W <= len; d += W) {
        vf wv[WROWS];
        UNROLL for (int c = 0; c < C; c++) wv[c] = wload(w, wrows[c], len, d, bf16);
        UNROLL for (int r = 0; r < R; r++) {
            const vf xv = load(x[r] + d);
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = lane_sum(acc[r][c]);
            for (int64_t e = d; e < len; e++) s += x[r][e] * wscalar(w, wrows[c], len, e, bf16);
            out[r][c] = s;
        }
}

/* out[r][col + c] = dot(in[r], weight row first + c) for rows r < rows and c < n,
 * WROWS weight rows at a time (those past n repeat row n - 1, computed and not
 * stored): COLS of them times every row, ROWS rows to a tile, while they are in
 * L1; then the rows left over one at a time, times all WROWS. */
static inline __attribute__((always_inline)) void block_dots(
    const float *const *in, float *const *out, int64_t col, int64_t rows, const void *w,
    int64_t first, int64_t n, int64_t len, const int bf16) {
    const int64_t tiled = rows - rows % ROWS;
    for (int64_t c0 = 0; c0 < n; c0 += WROWS) {
        int64_t wrows[WROWS];
        for (int c = 0; c < WROWS; c++) wrows[c] = first + (c0 + c < n ? c0 + c : n - 1);
        float tile[ROWS][WROWS];
        for (int c = 0; c < WROWS && c0 + c < n; c += COLS) {
            const int64_t keep = n - c0 - c < COLS ? n - c0 - c : COLS;
            for (int64_t r = 0; r < tiled; r += ROWS) {
                dot_tile(in + r, ROWS, w, wrows + c, COLS, len, bf16, tile);
                for (int q = 0; q < ROWS; q++)
                    memcpy(out[r + q] + col + c0 + c, tile[q], (size_t)keep * sizeof(float));
            }
        }
        const int64_t keep = n - c0 < WROWS ? n - c0 : WROWS;
        for (int64_t r = tiled; r < rows; r++) {
            dot_tile(in + r, 1, w, wrows, COLS1, len, bf16, tile);
            memcpy(out[r] + col + c0, tile[0], (size_t)keep * sizeof(float));
        }
    }
}

/* Below -88, g * sigmoid(g) is under 1e-36 in magnitude: 0 there (as activation.c). */
static inline vf silu(vf g) {
    return vselect(g < splat(-88.0f), splat(0.0f), g / (vexp(-g) + 1.0f));
}

/* rows: `rows` rows of the expert, in group order. gu rows are 2I wide: gate
 * columns, then up columns; the activation overwrites the gate half. */
static inline __attribute__((always_inline)) void run(
    const float *const *x_rows, float *const *gu_rows, float *const *y_rows,
    const void *w13, const void *w2, const float *topk_weights, const float *y, float *out,
    int64_t T, int64_t H, int64_t I, int64_t k, const int64_t *start, const int64_t *active,
    int64_t n_active, const int bf16) {
    const int64_t up_blocks = (I + BLOCK - 1) / BLOCK, down_blocks = (H + BLOCK - 1) / BLOCK;
    const int64_t flops = T * k * 3 * I * H;
#pragma omp parallel if (flops >= (1 << 18))
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n_active * up_blocks; item++) {
            const int64_t e = active[item / up_blocks], i0 = (item % up_blocks) * BLOCK;
            const int64_t n = I - i0 < BLOCK ? I - i0 : BLOCK;
            const int64_t r0 = start[e], rows = start[e + 1] - r0;
            block_dots(x_rows + r0, gu_rows + r0, i0, rows, w13, e * 2 * I + i0, n, H, bf16);
            block_dots(x_rows + r0, gu_rows + r0, I + i0, rows, w13, e * 2 * I + I + i0, n, H,
                       bf16);
            for (int64_t r = r0; r < r0 + rows; r++) {
                float g[W] = {0}, u[W] = {0}, a[W];
                memcpy(g, gu_rows[r] + i0, (size_t)n * sizeof(float));
                memcpy(u, gu_rows[r] + I + i0, (size_t)n * sizeof(float));
                store(a, silu(load(g)) * load(u));
                memcpy(gu_rows[r] + i0, a, (size_t)n * sizeof(float));
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n_active * down_blocks; item++) {
            const int64_t e = active[item / down_blocks], h0 = (item % down_blocks) * BLOCK;
            const int64_t n = H - h0 < BLOCK ? H - h0 : BLOCK;
            const int64_t r0 = start[e], rows = start[e + 1] - r0;
            block_dots((const float *const *)(gu_rows + r0), y_rows + r0, h0, rows, w2,
                       e * H + h0, n, I, bf16);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            float *o = out + t * H;
            const float *yt = y + t * k * H, *wt = topk_weights + t * k;
            int64_t h = 0;
            for (; h + W <= H; h += W) {
                vf s = load(yt + h) * wt[0];
                for (int64_t j = 1; j < k; j++) s = s + load(yt + j * H + h) * wt[j];
                store(o + h, s);
            }
            for (; h < H; h++) {
                float s = yt[h] * wt[0];
                for (int64_t j = 1; j < k; j++) s = s + yt[j * H + h] * wt[j];
                o[h] = s;
            }
        }
    }
}

/* scratch: 2 * E + 2 + T * k int64, then 3 * T * k pointers; gu: T * k * 2I floats;
 * y: T * k * H floats. weight_bf16: 0 for float32 expert weights, 1 for bfloat16. */
int llmcore_fused_moe(const float *hidden, int64_t hidden_stride, const void *w13,
                      const void *w2, int32_t weight_bf16, const float *topk_weights,
                      const int32_t *topk_ids, float *out, int64_t T, int64_t H, int64_t E,
                      int64_t I, int64_t k, int64_t *scratch, float *gu, float *y) {
    const int64_t n_pairs = T * k;
    int64_t *start = scratch, *active = scratch + E + 1, *pairs = scratch + 2 * E + 2;
    const float **x_rows = (const float **)(pairs + n_pairs);
    float **gu_rows = (float **)(x_rows + n_pairs), **y_rows = gu_rows + n_pairs;
    /* counting sort of the pairs by expert (stable: pair order within an expert) */
    memset(start, 0, (size_t)(E + 1) * sizeof(int64_t));
    for (int64_t p = 0; p < n_pairs; p++) {
        const int32_t id = topk_ids[p];
        if (id < 0 || id >= E) return -1;
        start[id + 1]++;
    }
    int64_t n_active = 0;
    for (int64_t e = 0; e < E; e++) {
        if (start[e + 1]) active[n_active++] = e;
        start[e + 1] += start[e];
    }
    /* each pair into its expert's next free row: start[e] counts up to start[e + 1],
     * then every start moves back one expert */
    for (int64_t p = 0; p < n_pairs; p++) pairs[start[topk_ids[p]]++] = p;
    for (int64_t e = E; e > 0; e--) start[e] = start[e - 1];
    start[0] = 0;
    for (int64_t r = 0; r < n_pairs; r++) {
        x_rows[r] = hidden + (pairs[r] / k) * hidden_stride;
        gu_rows[r] = gu + r * 2 * I;
        y_rows[r] = y + pairs[r] * H;
    }
    if (weight_bf16)
        run(x_rows, gu_rows, y_rows, w13, w2, topk_weights, y, out, T, H, I, k, start, active,
            n_active, 1);
    else
        run(x_rows, gu_rows, y_rows, w13, w2, topk_weights, y, out, T, H, I, k, start, active,
            n_active, 0);
    return 0;
}

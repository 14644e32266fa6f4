/* Mixture-of-experts feed-forward with SwiGLU experts (as ops/moe.py `fused_moe`),
 * float32 activations, float32 or bfloat16 expert weights.
 *
 *   hidden [T, H] (row stride of its own), w13 [E, 2I, H] (gate rows, then up rows),
 *   w2 [E, H, I], topk_weights [T, k] float32, topk_ids [T, k] int32;
 *   out[t] = sum over j = 0..k-1 of topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t]),
 *   expert_e(x) = w2[e] @ (silu(w13[e][:I] @ x) * (w13[e][I:] @ x)).
 *
 * The T * k (token, slot) pairs are grouped by expert (a stable counting sort), so
 * each expert's weights are read once per call for all its tokens. Three phases,
 * each an OpenMP loop over independent work items:
 *   1. (expert, block of 16 intermediate columns): gate and up dot products of the
 *      expert's rows, then silu(gate) * up into act [T * k, I] (rows in group order);
 *   2. (expert, block of 16 output columns): act rows times w2[e] into y [T * k, H]
 *      (rows in pair order t * k + j);
 *   3. (token): out[t] = w[t, 0] * y[t, 0] + w[t, 1] * y[t, 1] + ... in slot order.
 * Every output value is one dot product summed in one fixed order (16 lanes along
 * the reduced dimension, then the lanes left to right, then the scalar tail),
 * whichever tile computes it and whatever else is in the batch: a token's result
 * does not depend on the other tokens of the call.
 *
 * Returns 0, or -1 when a topk id is outside 0..E-1 (nothing is written then).
 */
#include <stdint.h>
#include <string.h>

#include "vec.h"

#define BLOCK 16 /* intermediate (phase 1) or output (phase 2) columns per work item */
#define TILE 4   /* weight rows per register tile */
_Static_assert(BLOCK == W, "phase 1 applies silu to one vector of BLOCK columns");

typedef uint16_t vh __attribute__((vector_size(32), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(64)));

static inline vf load_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    const vu bits = __builtin_convertvector(h, vu) << 16;
    vf f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* 16 weights of row `row` from column `col` (float32 or bfloat16 rows of `stride`). */
static inline vf wload(const void *w, int64_t row, int64_t stride, int64_t col, const int bf16) {
    if (bf16) return load_bf16((const uint16_t *)w + row * stride + col);
    return load((const float *)w + row * stride + col);
}

static inline float wscalar(const void *w, int64_t row, int64_t stride, int64_t col,
                            const int bf16) {
    if (bf16) return bf16_to_float(((const uint16_t *)w)[row * stride + col]);
    return ((const float *)w)[row * stride + col];
}

/* out[r][c] = dot(x[r], w row rows[c]) over len, for r < R (1 or 2) and c < TILE.
 * Inlined with constant R and bf16, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dot_tile(
    const float *const *x, const int R, const void *w, const int64_t *rows, int64_t stride,
    int64_t len, const int bf16, float out[2][TILE]) {
    vf acc[2][TILE];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < TILE; c++) acc[r][c] = splat(0.0f);
    int64_t d = 0;
    for (; d + W <= len; d += W) {
        vf wv[TILE];
        for (int c = 0; c < TILE; c++) wv[c] = wload(w, rows[c], stride, d, bf16);
        for (int r = 0; r < R; r++) {
            const vf xv = load(x[r] + d);
            for (int c = 0; c < TILE; c++) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < TILE; c++) {
            float s = hsum(acc[r][c]);
            for (int64_t e = d; e < len; e++) s += x[r][e] * wscalar(w, rows[c], stride, e, bf16);
            out[r][c] = s;
        }
}

/* out[r][c] for the weight rows first + c, c < n (<= BLOCK); rows past n repeat the
 * last one (computed, not stored), so every tile is full. */
static inline __attribute__((always_inline)) void dot_block(
    const float *const *x, const int R, const void *w, int64_t first, int64_t n, int64_t stride,
    int64_t len, const int bf16, float out[2][BLOCK]) {
    for (int64_t c0 = 0; c0 < n; c0 += TILE) {
        int64_t rows[TILE];
        for (int c = 0; c < TILE; c++) rows[c] = first + (c0 + c < n ? c0 + c : n - 1);
        float tile[2][TILE];
        dot_tile(x, R, w, rows, stride, len, bf16, tile);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < TILE && c0 + c < n; c++) out[r][c0 + c] = tile[r][c];
    }
}

/* Below -88, g * sigmoid(g) is under 1e-36 in magnitude: 0 there (as activation.c). */
static inline vf silu(vf g) {
    return vselect(g < splat(-88.0f), splat(0.0f), g / (vexp(-g) + 1.0f));
}

/* Phase 1 item: rows r0..r1 (group order) of expert e, intermediate columns i0..i0+n. */
static inline __attribute__((always_inline)) void up_block(
    const float *hidden, int64_t hidden_stride, const void *w13, const int64_t *pairs,
    int64_t k, int64_t r0, int64_t r1, int64_t e, int64_t i0, int64_t n, int64_t H, int64_t I,
    const int bf16, float *act) {
    const int64_t rows_per_expert = 2 * I;
    for (int64_t r = r0; r < r1; r += 2) {
        const float *x[2] = {hidden + (pairs[r] / k) * hidden_stride, NULL};
        float gate[2][BLOCK], up[2][BLOCK];
        const int64_t g = e * rows_per_expert + i0, u = g + I;
        if (r + 1 < r1) {
            x[1] = hidden + (pairs[r + 1] / k) * hidden_stride;
            dot_block(x, 2, w13, g, n, H, H, bf16, gate);
            dot_block(x, 2, w13, u, n, H, H, bf16, up);
        } else {
            dot_block(x, 1, w13, g, n, H, H, bf16, gate);
            dot_block(x, 1, w13, u, n, H, H, bf16, up);
        }
        for (int64_t q = r; q < r + 2 && q < r1; q++) {
            float gv[W] = {0}, uv[W] = {0}, av[W];
            memcpy(gv, gate[q - r], (size_t)n * sizeof(float));
            memcpy(uv, up[q - r], (size_t)n * sizeof(float));
            store(av, silu(load(gv)) * load(uv));
            memcpy(act + q * I + i0, av, (size_t)n * sizeof(float));
        }
    }
}

/* Phase 2 item: rows r0..r1 of expert e, output columns h0..h0+n, into y by pair. */
static inline __attribute__((always_inline)) void down_block(
    const float *act, const void *w2, const int64_t *pairs, int64_t r0, int64_t r1, int64_t e,
    int64_t h0, int64_t n, int64_t H, int64_t I, const int bf16, float *y) {
    for (int64_t r = r0; r < r1; r += 2) {
        const int R = r + 1 < r1 ? 2 : 1;
        const float *a[2] = {act + r * I, R == 2 ? act + (r + 1) * I : NULL};
        float out[2][BLOCK];
        if (R == 2)
            dot_block(a, 2, w2, e * H + h0, n, I, I, bf16, out);
        else
            dot_block(a, 1, w2, e * H + h0, n, I, I, bf16, out);
        for (int q = 0; q < R; q++) memcpy(y + pairs[r + q] * H + h0, out[q], (size_t)n * 4);
    }
}

static inline __attribute__((always_inline)) void run(
    const float *hidden, int64_t hidden_stride, const void *w13, const void *w2,
    const float *topk_weights, float *out, int64_t T, int64_t H, int64_t I, int64_t k,
    const int64_t *start, const int64_t *active, int64_t n_active, const int64_t *pairs,
    float *act, float *y, const int bf16) {
    const int64_t up_blocks = (I + BLOCK - 1) / BLOCK, down_blocks = (H + BLOCK - 1) / BLOCK;
    const int64_t flops = T * k * 3 * I * H;
#pragma omp parallel if (flops >= (1 << 18))
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n_active * up_blocks; item++) {
            const int64_t e = active[item / up_blocks], i0 = (item % up_blocks) * BLOCK;
            const int64_t n = I - i0 < BLOCK ? I - i0 : BLOCK;
            up_block(hidden, hidden_stride, w13, pairs, k, start[e], start[e + 1], e, i0, n, H,
                     I, bf16, act);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n_active * down_blocks; item++) {
            const int64_t e = active[item / down_blocks], h0 = (item % down_blocks) * BLOCK;
            const int64_t n = H - h0 < BLOCK ? H - h0 : BLOCK;
            down_block(act, w2, pairs, start[e], start[e + 1], e, h0, n, H, I, bf16, y);
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

/* scratch: 2 * E + 2 + T * k int64; act: T * k * I floats; y: T * k * H floats.
 * weight_bf16: 0 for float32 expert weights, 1 for bfloat16. */
int llmcore_fused_moe(const float *hidden, int64_t hidden_stride, const void *w13,
                      const void *w2, int32_t weight_bf16, const float *topk_weights,
                      const int32_t *topk_ids, float *out, int64_t T, int64_t H, int64_t E,
                      int64_t I, int64_t k, int64_t *scratch, float *act, float *y) {
    const int64_t n_pairs = T * k;
    int64_t *start = scratch, *active = scratch + E + 1, *pairs = scratch + 2 * E + 2;
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
    if (weight_bf16)
        run(hidden, hidden_stride, w13, w2, topk_weights, out, T, H, I, k, start, active,
            n_active, pairs, act, y, 1);
    else
        run(hidden, hidden_stride, w13, w2, topk_weights, out, T, H, I, k, start, active,
            n_active, pairs, act, y, 0);
    return 0;
}

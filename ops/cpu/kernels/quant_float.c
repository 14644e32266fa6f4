/* Plain float weights through the quantized-matmul framework (quant.c): BF16 and
 * F32 rows, so one decode driver and one tiling serve every weight format.
 *
 * BF16: activations are rounded to bfloat16 (round to nearest even, as torch's
 * float -> bfloat16 cast), and each (token, row) dot product accumulates float32
 * products of bfloat16 pairs: with AVX-512 BF16, `vdpbf16ps` over 32 values at a
 * time; elsewhere the same pairs widened to float32 and multiplied exactly (a
 * product of two bfloat16 values is exact in float32), summed in 16 lanes in the
 * same order. F32: activations as they are; fused multiply-adds over 16 lanes.
 *
 * Each (token, row) owns its accumulator and walks the columns in order, then sums
 * its lanes in a fixed order, so its value does not depend on the tile (nrows x
 * ntok) it was computed in: the bit stability quant.c promises. */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define MAX_TILE 4

static inline uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* ---- BF16 ------------------------------------------------------------------------ */

int64_t llmcore_qact_bf16_row_bytes(int64_t cols) { return 2 * cols; }

void llmcore_qact_bf16(const float *x, int64_t cols, uint8_t *a) {
    uint16_t *out = (uint16_t *)a;
    for (int64_t c = 0; c < cols; c++) out[c] = to_bf16(x[c]);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
static inline __m512i load_bf16(const uint8_t *p, int64_t c, int64_t cols) {
    const int64_t left = cols - c;
    if (left >= 32) return _mm512_loadu_si512((const void *)(p + 2 * c));
    return _mm512_maskz_loadu_epi16((__mmask32)((1u << left) - 1u), p + 2 * c);
}

void llmcore_qtile_bf16(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    __m512 acc[MAX_TILE][MAX_TILE];
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nrows; r++) acc[t][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 32) {
        __m512i wv[MAX_TILE];
        for (int r = 0; r < nrows; r++) wv[r] = load_bf16(w + r * w_row_bytes, c, cols);
        for (int t = 0; t < ntok; t++) {
            const __m512i av = load_bf16(a + t * a_row_bytes, c, cols);
            for (int r = 0; r < nrows; r++)
                acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)av, (__m512bh)wv[r]);
        }
    }
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nrows; r++) out[t * out_stride + r] = _mm512_reduce_add_ps(acc[t][r]);
}
#else
void llmcore_qtile_bf16(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    for (int t = 0; t < ntok; t++) {
        const uint16_t *ar = (const uint16_t *)(a + t * a_row_bytes);
        for (int r = 0; r < nrows; r++) {
            const uint16_t *wr = (const uint16_t *)(w + r * w_row_bytes);
            float lanes[16] = {0};
            for (int64_t c = 0; c < cols; c++)
                lanes[(c / 2) % 16] += from_bf16(ar[c]) * from_bf16(wr[c]);
            float sum = 0.0f;
            for (int l = 0; l < 16; l++) sum += lanes[l];
            out[t * out_stride + r] = sum;
        }
    }
}
#endif

/* ---- F32 ------------------------------------------------------------------------- */

int64_t llmcore_qact_f32_row_bytes(int64_t cols) { return 4 * cols; }

void llmcore_qact_f32(const float *x, int64_t cols, uint8_t *a) {
    memcpy(a, x, sizeof(float) * (size_t)cols);
}

#if defined(__AVX512F__)
static inline __m512 load_f32(const uint8_t *p, int64_t c, int64_t cols) {
    const int64_t left = cols - c;
    if (left >= 16) return _mm512_loadu_ps((const void *)(p + 4 * c));
    return _mm512_maskz_loadu_ps((__mmask16)((1u << left) - 1u), p + 4 * c);
}

void llmcore_qtile_f32(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                       const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                       int64_t out_stride) {
    __m512 acc[MAX_TILE][MAX_TILE];
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nrows; r++) acc[t][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        __m512 wv[MAX_TILE];
        for (int r = 0; r < nrows; r++) wv[r] = load_f32(w + r * w_row_bytes, c, cols);
        for (int t = 0; t < ntok; t++) {
            const __m512 av = load_f32(a + t * a_row_bytes, c, cols);
            for (int r = 0; r < nrows; r++) acc[t][r] = _mm512_fmadd_ps(av, wv[r], acc[t][r]);
        }
    }
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nrows; r++) out[t * out_stride + r] = _mm512_reduce_add_ps(acc[t][r]);
}
#else
void llmcore_qtile_f32(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                       const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                       int64_t out_stride) {
    for (int t = 0; t < ntok; t++) {
        const float *ar = (const float *)(a + t * a_row_bytes);
        for (int r = 0; r < nrows; r++) {
            const float *wr = (const float *)(w + r * w_row_bytes);
            float lanes[16] = {0};
            for (int64_t c = 0; c < cols; c++)
                lanes[c % 16] = __builtin_fmaf(ar[c], wr[c], lanes[c % 16]);
            float sum = 0.0f;
            for (int l = 0; l < 16; l++) sum += lanes[l];
            out[t * out_stride + r] = sum;
        }
    }
}
#endif

/* ---- rows back to float32 (get_rows) ---------------------------------------------- */

void llmcore_qdequant_bf16(const uint8_t *row, int64_t cols, float *out) {
    const uint16_t *h = (const uint16_t *)row;
    for (int64_t c = 0; c < cols; c++) out[c] = from_bf16(h[c]);
}

void llmcore_qdequant_f32(const uint8_t *row, int64_t cols, float *out) {
    memcpy(out, row, sizeof(float) * (size_t)cols);
}

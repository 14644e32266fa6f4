/* Tile functions of Q4_0, Q4_1 and Q8_0 (32-value blocks) and of I8_ROW: up to 4
 * weight rows x 4 activation rows per call, in the instruction set the compiler's
 * predefined macros allow: AVX-512 VNNI (vpdpbusd on 512 bits, two weight rows per
 * register), AVX2 (vpmaddubsw + vpmaddwd, or AVX-VNNI's vpdpbusd on 256 bits), or
 * portable C.
 *
 * Canonical arithmetic of a block type, the same in every instruction set, so the
 * three builds agree bit for bit (and no (token, row) depends on the tile):
 *   per block b, in order, for the 8 lanes i (values 4i .. 4i+3 of the block):
 *     s_i   = sum of the 4 integer products w * a  (exact in int32)
 *     acc_i = fma((float)s_i, d_w * d_a, acc_i)   (d_w * d_a is exact: two fp16 values)
 *   Q4_1 also: msum = fma(m_w, s_a, msum)          (s_a = the Q8_1 block's d * sum q)
 *   result = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))  (+ msum)
 * I8_ROW sums the whole row in integers (exact), then (float)sum * (scale_w * scale_a).
 *
 * vpdpbusd multiplies unsigned by signed bytes: Q4 nibbles are unsigned already (Q4_0
 * subtracts 8 * sum a per lane afterwards); Q8_0 and I8 weights are offset by 128 (xor
 * 0x80) and 128 * sum a is subtracted. The AVX2 path takes |w| against sign(a, w)
 * instead, which keeps vpmaddubsw's pair sums inside int16.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant_layout.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__FMA__) && defined(__F16C__)
#define QISA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QISA_AVX2 1
#endif

#define AI static inline __attribute__((always_inline))

/* Software prefetch of the weights about QPF_BYTES ahead (the rows of the tiles to
   come, as rows follow each other in memory) while a tile runs, where the weights
   stream from memory: with few tokens a tile is too quick for the hardware
   prefetchers, which also stop at each 4 KiB page. */
#ifndef QPF_BYTES
#define QPF_BYTES 16384
#endif
AI int64_t qpf_ahead(int64_t wrb) { return (QPF_BYTES / wrb + 1) * wrb; }
#ifndef QPF_HINT
#define QPF_HINT _MM_HINT_T0
#endif
#if QPF_BYTES
#define QPREFETCH(p) _mm_prefetch((const char *)(p), QPF_HINT)
#else
#define QPREFETCH(p) ((void)0)
#endif

enum qkind { K_Q4_0, K_Q4_1, K_Q8_0 };

AI int kind_bytes(const int kind) { return kind == K_Q4_0 ? 18 : kind == K_Q4_1 ? 20 : 34; }
AI int kind_qs(const int kind) { return kind == K_Q4_1 ? 4 : 2; } /* offset of the quants */

const char *llmcore_qisa(void) {
#if defined(QISA_AVX512)
    return "avx512vnni";
#elif defined(QISA_AVX2)
#if defined(__AVXVNNI__)
    return "avx2+avxvnni";
#else
    return "avx2";
#endif
#else
    return "scalar";
#endif
}

/* Calls F(NR, NT, args...) with compile-time tile dimensions. */
#define QTILE_SWITCH(F, nrows, ntok, ...)                       \
    switch ((nrows) * 8 + (ntok)) {                             \
    case 011: F(1, 1, __VA_ARGS__); break;                      \
    case 012: F(1, 2, __VA_ARGS__); break;                      \
    case 013: F(1, 3, __VA_ARGS__); break;                      \
    case 014: F(1, 4, __VA_ARGS__); break;                      \
    case 021: F(2, 1, __VA_ARGS__); break;                      \
    case 022: F(2, 2, __VA_ARGS__); break;                      \
    case 023: F(2, 3, __VA_ARGS__); break;                      \
    case 024: F(2, 4, __VA_ARGS__); break;                      \
    case 031: F(3, 1, __VA_ARGS__); break;                      \
    case 032: F(3, 2, __VA_ARGS__); break;                      \
    case 033: F(3, 3, __VA_ARGS__); break;                      \
    case 034: F(3, 4, __VA_ARGS__); break;                      \
    case 041: F(4, 1, __VA_ARGS__); break;                      \
    case 042: F(4, 2, __VA_ARGS__); break;                      \
    case 043: F(4, 3, __VA_ARGS__); break;                      \
    case 044: F(4, 4, __VA_ARGS__); break;                      \
    default: break;                                             \
    }

static inline uint16_t qload_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint32_t qload_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- AVX-512 VNNI ------------------------------------------------------------- */
#if defined(QISA_AVX512)

/* Two rows' block b as one register. Q8_0: [row 0's 32 bytes | row 1's], xor 0x80.
   Q4: [r0 low nibbles, r1 low, r0 high, r1 high] (16 bytes each): values 0-15 and
   16-31 of each row, so lanes 0-3 and 8-11 are row 0's canonical lanes 0-7. */
AI __m512i v512_pair(const int kind, const uint8_t *p0, const uint8_t *p1) {
    if (kind == K_Q8_0) {
        __m512i z = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p0));
        z = _mm512_inserti64x4(z, _mm256_loadu_si256((const __m256i *)p1), 1);
        return _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));
    }
    const __m256i v = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p0)),
        _mm_loadu_si128((const __m128i *)p1), 1);
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* A token's block in the pair layout: [a | a] (Q8_0) or [a0-15, a0-15, a16-31, a16-31]. */
AI __m512i v512_act(const int kind, const uint8_t *q) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    if (kind == K_Q8_0) return _mm512_broadcast_i64x4(v);
    const __m512i z = _mm512_castsi256_si512(v);
    return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));
}

AI float v128_hsum(__m128 r) { /* (r0 + r2) + (r1 + r3) */
    const __m128 x = _mm_add_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/* The lanes of the per-row scale vector of pair p (indices into the 4 d's, or into
   Q4_1's [d0 m0 d1 m1 d2 m2 d3 m3]). */
AI __m512i v512_scale_index(const int kind, const int p) {
    const int r0 = 2 * p, r1 = 2 * p + 1;
    if (kind == K_Q8_0)
        return _mm512_setr_epi32(r0, r0, r0, r0, r0, r0, r0, r0, r1, r1, r1, r1, r1, r1, r1, r1);
    const int m = kind == K_Q4_1 ? 2 : 1;
    const int a = m * r0, b = m * r1;
    return _mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b);
}

/* Up to 4 rows x 8 tokens: 16 accumulators, and Q4_1's m * s sums of 4 tokens x 4
   rows in one register (lane 4 * token + row, updated under a mask). */
AI void tile32_avx512(const int kind, const int NR, const int NT, int64_t cols,
                      const uint8_t *w, int64_t wrb, const uint8_t *a, int64_t arb, float *out,
                      int64_t os) {
    const int64_t nb = cols / QK;
    const int bb = kind_bytes(kind), qo = kind_qs(kind);
    const int NP = (NR + 1) / 2;
    const uint8_t *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (r < NR ? r : 0) * wrb; /* extra rows: row 0 again */
    __m512 acc[2][8], msum[2];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    msum[0] = msum[1] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    const int64_t pf = qpf_ahead(wrb);
    const int64_t d_at = cols, s_at = cols + 4 * nb; /* the d and s arrays of a token's row */
    for (int64_t b = 0; b < nb; b++) {
        const int64_t o = b * bb;
        __m512 scales, m16 = _mm512_setzero_ps();
        if (kind == K_Q4_1) {
            const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32(
                (int)qload_u32(wr[0] + o), (int)qload_u32(wr[1] + o), (int)qload_u32(wr[2] + o),
                (int)qload_u32(wr[3] + o)));
            scales = _mm512_castps256_ps512(dm);
            m16 = _mm512_permutexvar_ps(
                _mm512_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7, 1, 3, 5, 7), scales);
        } else {
            scales = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_setr_epi16(
                (short)qload_u16(wr[0] + o), (short)qload_u16(wr[1] + o),
                (short)qload_u16(wr[2] + o), (short)qload_u16(wr[3] + o), 0, 0, 0, 0)));
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) QPREFETCH(wr[r] + o + pf);
        __m512i q[2];
        __m512 dw[2];
        q[0] = v512_pair(kind, wr[0] + o + qo, wr[1] + o + qo);
        dw[0] = _mm512_permutexvar_ps(v512_scale_index(kind, 0), scales);
        if (NP > 1) {
            q[1] = v512_pair(kind, wr[2] + o + qo, wr[3] + o + qo);
            dw[1] = _mm512_permutexvar_ps(v512_scale_index(kind, 1), scales);
        }
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const uint8_t *at = a + t * arb;
            const __m512i av = v512_act(kind, at + b * QK);
            __m512i init = zero;
            if (kind == K_Q4_0)
                init = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(8), av));
            else if (kind == K_Q8_0)
                init = _mm512_sub_epi32(
                    zero, _mm512_dpbusd_epi32(zero, _mm512_set1_epi8((char)0x80), av));
            const __m512 da = _mm512_set1_ps(qload_f32(at + d_at + 4 * b));
#pragma GCC unroll 2
            for (int p = 0; p < NP; p++) {
                const __m512i s = _mm512_dpbusd_epi32(init, q[p], av);
                acc[p][t] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[p], da), acc[p][t]);
            }
            if (kind == K_Q4_1)
                msum[t / 4] = _mm512_mask3_fmadd_ps(m16, _mm512_set1_ps(qload_f32(at + s_at + 4 * b)),
                                                    msum[t / 4], (__mmask16)(0xF << (4 * (t % 4))));
        }
    }
    float m[2][16];
    _mm512_storeu_ps(m[0], msum[0]);
    _mm512_storeu_ps(m[1], msum[1]);
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
#pragma GCC unroll 2
        for (int p = 0; p < NP; p++) {
            const __m512 v = acc[p][t];
            const __m128 q0 = _mm512_castps512_ps128(v), q1 = _mm512_extractf32x4_ps(v, 1);
            const __m128 q2 = _mm512_extractf32x4_ps(v, 2), q3 = _mm512_extractf32x4_ps(v, 3);
            float r0, r1;
            if (kind == K_Q8_0) {
                r0 = v128_hsum(_mm_add_ps(q0, q1));
                r1 = v128_hsum(_mm_add_ps(q2, q3));
            } else {
                r0 = v128_hsum(_mm_add_ps(q0, q2));
                r1 = v128_hsum(_mm_add_ps(q1, q3));
            }
            if (kind == K_Q4_1) {
                r0 += m[t / 4][4 * (t % 4) + 2 * p];
                r1 += m[t / 4][4 * (t % 4) + 2 * p + 1];
            }
            out[t * os + 2 * p] = r0;
            if (2 * p + 1 < NR) out[t * os + 2 * p + 1] = r1;
        }
    }
}

#define TILE32(NR, NT, kind, ...) tile32_avx512(kind, NR, NT, __VA_ARGS__)

/* I8_ROW: 64 columns a step, the integer sums kept in 16 registers for the whole row. */
AI void tile_i8_avx512(const int NR, const int NT, int64_t cols, const uint8_t *w, int64_t wrb,
                       const uint8_t *a, int64_t arb, float *out, int64_t os) {
    const uint8_t *wr[4], *at[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (r < NR ? r : 0) * wrb;
    for (int t = 0; t < 4; t++) at[t] = a + (t < NT ? t : 0) * arb;
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_si512();
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int64_t pf = qpf_ahead(wrb);
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        __m512i q[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            QPREFETCH(wr[r] + c + pf);
            q[r] = _mm512_xor_si512(_mm512_loadu_si512(wr[r] + c), flip);
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512i av = _mm512_loadu_si512(at[t] + QA_I8_HEAD + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], q[r], av);
        }
    }
    if (c < cols) { /* the last cols % 64: masked loads read zeros, and 128 * 0 adds 0 */
        const __mmask64 m = ((__mmask64)1 << (cols - c)) - 1;
        __m512i q[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            q[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, wr[r] + c), flip);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512i av = _mm512_maskz_loadu_epi8(m, at[t] + QA_I8_HEAD + c);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], q[r], av);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        const float sa = qload_f32(at[t]);
        int32_t asum;
        memcpy(&asum, at[t] + 4, sizeof asum);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const __m512i v = acc[r][t];
            const __m512i wide =
                _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
                                 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
            const int64_t s = _mm512_reduce_add_epi64(wide) - 128 * (int64_t)asum;
            out[t * os + r] = (float)s * (qload_f32(wr[r] + cols) * sa);
        }
    }
}

#define TILE_I8(NR, NT, ...) tile_i8_avx512(NR, NT, __VA_ARGS__)

/* ---- AVX2 (with AVX-VNNI where present) ---------------------------------------- */
#elif defined(QISA_AVX2)

/* acc + the sums of 4 products u * s per int32 lane (u unsigned, s signed; without
   VNNI each pair of products must fit in int16, which the callers ensure). */
AI __m256i v256_dot(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                                                   _mm256_set1_epi16(1)));
#endif
}

/* One row's block b: Q8_0's 32 signed bytes, or a Q4 block's 32 nibbles in value order. */
AI __m256i v256_row(const int kind, const uint8_t *qs) {
    if (kind == K_Q8_0) return _mm256_loadu_si256((const __m256i *)qs);
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
}

AI float v128_hsum(__m128 r) {
    const __m128 x = _mm_add_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/* Up to 4 rows x 2 tokens (16 ymm registers hold no more). */
AI void tile32_avx2_pass(const int kind, const int NR, const int NT, int64_t cols,
                         const uint8_t *w, int64_t wrb, const uint8_t *a, int64_t arb,
                         float *out, int64_t os) {
    const int64_t nb = cols / QK;
    const int bb = kind_bytes(kind), qo = kind_qs(kind);
    const uint8_t *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (r < NR ? r : 0) * wrb;
    const uint8_t *at[2];
    const float *ad[2], *as[2];
    for (int t = 0; t < 2; t++) {
        at[t] = a + (t < NT ? t : 0) * arb;
        ad[t] = qa8_d(at[t], cols);
        as[t] = qa8_s(at[t], cols);
    }
    __m256 acc[4][2];
    __m128 msum[2];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    msum[0] = msum[1] = _mm_setzero_ps();
    const __m256i zero = _mm256_setzero_si256();
    const int64_t pf = qpf_ahead(wrb);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t o = b * bb;
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) QPREFETCH(wr[r] + o + pf);
        float dw[4];
        __m128 m4 = _mm_setzero_ps();
        if (kind == K_Q4_1) {
            const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32(
                (int)qload_u32(wr[0] + o), (int)qload_u32(wr[1] + o), (int)qload_u32(wr[2] + o),
                (int)qload_u32(wr[3] + o)));
            _mm_storeu_ps(dw, _mm256_castps256_ps128(
                                  _mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6))));
            m4 = _mm256_castps256_ps128(
                _mm256_permutevar8x32_ps(dm, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7)));
        } else {
            _mm_storeu_ps(dw, _mm_cvtph_ps(_mm_setr_epi16(
                                  (short)qload_u16(wr[0] + o), (short)qload_u16(wr[1] + o),
                                  (short)qload_u16(wr[2] + o), (short)qload_u16(wr[3] + o), 0, 0,
                                  0, 0)));
        }
        __m256i q[4], u[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            q[r] = v256_row(kind, wr[r] + o + qo);
            u[r] = kind == K_Q8_0 ? _mm256_abs_epi8(q[r]) : q[r];
        }
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(at[t] + b * QK));
            __m256i off = zero;
            if (kind == K_Q4_0) off = v256_dot(zero, _mm256_set1_epi8(8), av);
            const float da = ad[t][b];
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                __m256i s;
                if (kind == K_Q8_0)
                    s = v256_dot(zero, u[r], _mm256_sign_epi8(av, q[r]));
                else
                    s = _mm256_sub_epi32(v256_dot(zero, u[r], av), off);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw[r] * da),
                                            acc[r][t]);
            }
            if (kind == K_Q4_1) msum[t] = _mm_fmadd_ps(m4, _mm_set1_ps(as[t][b]), msum[t]);
        }
    }
#pragma GCC unroll 2
    for (int t = 0; t < NT; t++) {
        float m[4];
        _mm_storeu_ps(m, msum[t]);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const __m256 v = acc[r][t];
            float x = v128_hsum(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
            if (kind == K_Q4_1) x += m[r];
            out[t * os + r] = x;
        }
    }
}

AI void tile32_avx2(const int kind, const int NR, const int NT, int64_t cols, const uint8_t *w,
                    int64_t wrb, const uint8_t *a, int64_t arb, float *out, int64_t os) {
    tile32_avx2_pass(kind, NR, NT < 2 ? NT : 2, cols, w, wrb, a, arb, out, os);
    if (NT > 2) tile32_avx2_pass(kind, NR, NT - 2, cols, w, wrb, a + 2 * arb, arb, out + 2 * os, os);
}

#define TILE32(NR, NT, kind, ...) tile32_avx2(kind, NR, NT, __VA_ARGS__)

/* I8_ROW, one token a pass (4 rows' sums, weights and |weights| fill the registers). */
AI void tile_i8_avx2(const int NR, const int NT, int64_t cols, const uint8_t *w, int64_t wrb,
                     const uint8_t *a, int64_t arb, float *out, int64_t os) {
    const uint8_t *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (r < NR ? r : 0) * wrb;
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++) {
        const uint8_t *at = a + t * arb;
        const int8_t *aq = (const int8_t *)(at + QA_I8_HEAD);
        __m256i acc[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_si256();
        int64_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(aq + c));
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                if (t == 0) QPREFETCH(wr[r] + c + qpf_ahead(wrb));
                const __m256i q = _mm256_loadu_si256((const __m256i *)(wr[r] + c));
                acc[r] = v256_dot(acc[r], _mm256_abs_epi8(q), _mm256_sign_epi8(av, q));
            }
        }
        const float sa = qload_f32(at);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            int32_t lanes[8];
            _mm256_storeu_si256((__m256i *)lanes, acc[r]);
            int64_t s = 0;
            for (int i = 0; i < 8; i++) s += lanes[i];
            for (int64_t k = c; k < cols; k++) s += (int64_t)(int8_t)wr[r][k] * aq[k];
            out[t * os + r] = (float)s * (qload_f32(wr[r] + cols) * sa);
        }
    }
}

#define TILE_I8(NR, NT, ...) tile_i8_avx2(NR, NT, __VA_ARGS__)

/* ---- portable C --------------------------------------------------------------- */
#else

AI int scalar_wq(const int kind, const uint8_t *qs, int j) {
    if (kind == K_Q8_0) return (int8_t)qs[j];
    const int q = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
    return kind == K_Q4_0 ? q - 8 : q;
}

static inline float scalar_hsum8(const float l[8]) {
    const float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

AI float dot32_scalar(const int kind, int64_t cols, const uint8_t *w, const uint8_t *a) {
    const int64_t nb = cols / QK;
    const int bb = kind_bytes(kind), qo = kind_qs(kind);
    const float *ad = qa8_d(a, cols), *as = qa8_s(a, cols);
    float acc[8] = {0};
    float msum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bb;
        const float d = qf16_to_f32(blk) * ad[b];
        const int8_t *aq = (const int8_t *)a + b * QK;
        for (int i = 0; i < 8; i++) {
            int32_t s = 0;
            for (int k = 4 * i; k < 4 * i + 4; k++) s += scalar_wq(kind, blk + qo, k) * aq[k];
            acc[i] = fmaf((float)s, d, acc[i]);
        }
        if (kind == K_Q4_1) msum = fmaf(qf16_to_f32(blk + 2), as[b], msum);
    }
    const float x = scalar_hsum8(acc);
    return kind == K_Q4_1 ? x + msum : x;
}

AI void tile32_scalar(const int kind, const int NR, const int NT, int64_t cols, const uint8_t *w,
                      int64_t wrb, const uint8_t *a, int64_t arb, float *out, int64_t os) {
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++)
            out[t * os + r] = dot32_scalar(kind, cols, w + r * wrb, a + t * arb);
}

#define TILE32(NR, NT, kind, ...) tile32_scalar(kind, NR, NT, __VA_ARGS__)

AI void tile_i8_scalar(const int NR, const int NT, int64_t cols, const uint8_t *w, int64_t wrb,
                       const uint8_t *a, int64_t arb, float *out, int64_t os) {
    for (int t = 0; t < NT; t++) {
        const uint8_t *at = a + t * arb;
        const int8_t *aq = (const int8_t *)(at + QA_I8_HEAD);
        for (int r = 0; r < NR; r++) {
            const int8_t *wq = (const int8_t *)(w + r * wrb);
            int64_t s = 0;
            for (int64_t k = 0; k < cols; k++) s += (int64_t)wq[k] * aq[k];
            out[t * os + r] = (float)s * (qload_f32(w + r * wrb + cols) * qload_f32(at));
        }
    }
}

#define TILE_I8(NR, NT, ...) tile_i8_scalar(NR, NT, __VA_ARGS__)

#endif

/* ---- the exported tiles ------------------------------------------------------- */

/* They take up to QTILE_TOKENS (8) tokens a call: the AVX-512 tile of the block types
   holds 8 at once (the weights' unpacking and scales then serve twice as many tokens);
   the other paths, and I8_ROW's 16 integer accumulators, go 4 at a time. */
#if defined(QISA_AVX512)
#define QWIDE 8
#else
#define QWIDE 4
#endif

#define QTILE_SWITCH_8(F, nrows, ...)     \
    switch (nrows) {                      \
    case 1: F(1, 8, __VA_ARGS__); break;  \
    case 2: F(2, 8, __VA_ARGS__); break;  \
    case 3: F(3, 8, __VA_ARGS__); break;  \
    case 4: F(4, 8, __VA_ARGS__); break;  \
    default: break;                       \
    }

static inline void tile32(const int kind, int64_t cols, const uint8_t *w, int64_t wrb, int nrows,
                          const uint8_t *a, int64_t arb, int ntok, float *out, int64_t os) {
    while (ntok > 0) {
        const int nt = ntok >= QWIDE ? QWIDE : ntok > 4 ? 4 : ntok;
        if (nt == 8) {
#if QWIDE == 8
            switch (kind) {
            case K_Q4_0: QTILE_SWITCH_8(TILE32, nrows, K_Q4_0, cols, w, wrb, a, arb, out, os) break;
            case K_Q4_1: QTILE_SWITCH_8(TILE32, nrows, K_Q4_1, cols, w, wrb, a, arb, out, os) break;
            default: QTILE_SWITCH_8(TILE32, nrows, K_Q8_0, cols, w, wrb, a, arb, out, os) break;
            }
#endif
        } else {
            switch (kind) {
            case K_Q4_0: QTILE_SWITCH(TILE32, nrows, nt, K_Q4_0, cols, w, wrb, a, arb, out, os) break;
            case K_Q4_1: QTILE_SWITCH(TILE32, nrows, nt, K_Q4_1, cols, w, wrb, a, arb, out, os) break;
            default: QTILE_SWITCH(TILE32, nrows, nt, K_Q8_0, cols, w, wrb, a, arb, out, os) break;
            }
        }
        a += nt * arb;
        out += nt * os;
        ntok -= nt;
    }
}

void llmcore_qtile_q4_0(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile32(K_Q4_0, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

void llmcore_qtile_q4_1(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile32(K_Q4_1, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

void llmcore_qtile_q8_0(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile32(K_Q8_0, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

void llmcore_qtile_i8_row(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                          const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                          int64_t out_stride) {
    for (; ntok > 0; ntok -= 4, a += 4 * a_row_bytes, out += 4 * out_stride) {
        const int nt = ntok < 4 ? ntok : 4;
        QTILE_SWITCH(TILE_I8, nrows, nt, cols, w, w_row_bytes, a, a_row_bytes, out, out_stride)
    }
}

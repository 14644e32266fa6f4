/* K-quant kernels of the quantized CPU matmul (quant.c plugs them in): Q4_K, Q5_K
 * and Q6_K weights, as GGUF stores them (block_q4_K / block_q5_K / block_q6_K: 144 /
 * 176 / 210 bytes a super-block of 256 values), multiplied against activations
 * quantized to Q8_K; and their dequantized rows (get_rows).
 *
 * Q8_K activations, our layout, ACT_BYTES (320) a block of 256 values: int8 q[256]
 * at 0, int16 bsums[16] (sums of 16 q) at 256, int16 sums of 32 q [8] at 288, float
 * d at 304, zeros to 320. The values are ggml's quantize_row_q8_K_ref's bit for bit:
 * d from the signed value of largest magnitude (the first one), q =
 * nearest_int(-127 / max * x) (at most 127), d = 1 / (-127 / max).
 *
 * A dot product (weight row, activation row), the same operations on every path
 * (AVX-512 VNNI, AVX2, scalar), so they agree bit for bit and a value never depends
 * on the tile around it. Per super-block, sixteen int32 lanes, exact:
 *   P[l] = sum over k < 4, b < 4 of scale(v) * q(v) * a(v),  v = 64 k + 4 l + b
 * with q the weight's unsigned 4/5/6-bit value and scale(v) its sub-block's scale
 * (Q6_K: minus 32 * (sc[2l] * bsums[2l] + sc[2l+1] * bsums[2l+1]) in lanes l < 8,
 * its -32 offset). Then in float, F[l] = fma((float)P[l], d_w * d_a, F[l]); for
 * Q4_K/Q5_K, with the mins m[8] and the sums of 32 activations s32[8], also
 *   G[j] = fma((float)(m[2j] * s32[2j] + m[2j+1] * s32[2j+1]), dmin_w * d_a, G[j])
 * for j < 4. The result is tree(F) - tree(G), a tree that adds lanes l and l + 8,
 * then l and l + 4, l and l + 2, then the two left.
 *
 * The integer dot products: AVX-512 vpmaddubsw (unsigned weights times signed
 * activations, pairs to int16: at most 2 * 63 * 127, no saturation) then vpdpwssd
 * with the int16 scales (VNNI; vpmaddwd + vpaddd without it), a tile block by block
 * (each weight block unpacked once for every activation row, each activation block
 * used by every weight row while it is in L1, the next tile prefetched as one stream);
 * AVX2 the same on two 256-bit halves (vpdpwssd of AVX-VNNI where the target has it),
 * row by row; else portable C.
 */
#include <stdint.h>
#include <string.h>

#include "quant.h"
#include "vec.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__FMA__) && defined(__F16C__)
#define QK_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QK_AVX2 1
#include <immintrin.h>
#endif

#define QK 256          /* values a super-block */
#define ACT_BYTES 320   /* a Q8_K activation block */
#define ACT_BSUMS 256
#define ACT_BSUM32 288
#define ACT_D 304
#define Q4K_BYTES 144   /* d, dmin, scales[12], qs[128] */
#define Q5K_BYTES 176   /* d, dmin, scales[12], qh[32], qs[128] */
#define Q6K_BYTES 210   /* ql[128], qh[64], scales[16] (int8), d */

int64_t llmcore_qact_q8_k_row_bytes(int64_t cols) { return cols / QK * ACT_BYTES; }

/* ---- helpers shared by every path ------------------------------------------------ */

static inline float fp16_to_f32(const uint8_t *p) {
    const uint16_t h = (uint16_t)(p[0] | p[1] << 8);
#if defined(QK_AVX512) || defined(QK_AVX2)
    /* vmovd + vcvtph2ps: _cvtsh_ss's vpinsrw would merge into the register of the last
     * conversion and chain every block's load to the one before */
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        const float f = (float)man * 0x1p-24f; /* zero or subnormal: exact */
        return sign ? -f : f;
    }
    bits = sign | (exp == 0x1f ? 0x7f800000u | man << 13 : (exp + 112) << 23 | man << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The eight 6-bit scales and mins of a Q4_K/Q5_K block (12 bytes at s): scale j in
 * byte j of *sc, min j in byte j of *mn (little-endian: byte j is bits 8j..8j+7).
 * Scales and mins 0..3 are the low six bits of bytes 0..3 and 4..7; 4..7 take their
 * low four bits from the nibbles of bytes 8..11 and the top two from bits 6-7 of
 * bytes 0..3 (scales) and 4..7 (mins). */
static inline void k4_scales(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    const uint32_t u0 = le32(s), u1 = le32(s + 4), u2 = le32(s + 8);
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    *sc = (uint64_t)(u0 & 0x3f3f3f3fu) | (uint64_t)sc_hi << 32;
    *mn = (uint64_t)(u1 & 0x3f3f3f3fu) | (uint64_t)mn_hi << 32;
}

static inline uint8_t byte_of(uint64_t v, int j) { return (uint8_t)(v >> (8 * j)); }

static inline float act_d(const uint8_t *ab) {
    float d;
    memcpy(&d, ab + ACT_D, sizeof d);
    return d;
}

/* ---- Q8_K activations ------------------------------------------------------------ */

typedef int8_t vb __attribute__((vector_size(16)));

/* The index of the first of the QK values at x whose magnitude is amax (one is). */
static inline int first_of(const float *x, float amax) {
#if defined(QK_AVX512)
    for (int i = 0;; i += 16) {
        const __m512 ax = _mm512_abs_ps(_mm512_loadu_ps(x + i));
        const __mmask16 m = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(amax), _CMP_EQ_OQ);
        if (m) return i + __builtin_ctz(m);
    }
#elif defined(QK_AVX2)
    const __m256 sign = _mm256_set1_ps(-0.0f), top = _mm256_set1_ps(amax);
    for (int i = 0;; i += 8) {
        const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
        const int m = _mm256_movemask_ps(_mm256_cmp_ps(ax, top, _CMP_EQ_OQ));
        if (m) return i + __builtin_ctz((unsigned)m);
    }
#else
    int i = 0;
    while (!(__builtin_fabsf(x[i]) == amax)) i++;
    return i;
#endif
}

/* The sum of the W lanes of q (each at most 127 in magnitude). (On AVX2 the loop
 * beats intrinsics on the two halves, which the vector type sends through memory.) */
static inline int16_t lane_sum(vi q) {
#if defined(QK_AVX512)
    __m512i v;
    memcpy(&v, &q, sizeof v);
    return (int16_t)_mm512_reduce_add_epi32(v);
#else
    int32_t sum = 0;
    for (int l = 0; l < W; l++) sum += q[l];
    return (int16_t)sum;
#endif
}

void llmcore_qact_q8_k(const float *x, int64_t cols, uint8_t *a) {
    for (int64_t blk = 0; blk < cols / QK; blk++, x += QK, a += ACT_BYTES) {
        vf top = splat(0.0f);
        for (int i = 0; i < QK; i += W) {
            const vf ax = (vf)((vi)load(x + i) & 0x7fffffff);
            top = vselect(ax > top, ax, top); /* a NaN never wins, as in ggml */
        }
        float amax = 0.0f;
        for (int l = 0; l < W; l++) amax = top[l] > amax ? top[l] : amax;
        memset(a + ACT_BSUMS, 0, ACT_BYTES - ACT_BSUMS);
        if (amax == 0.0f) {
            memset(a, 0, QK);
            continue;
        }
        /* ggml keeps the first value of the largest magnitude */
        const float iscale = -127.0f / x[first_of(x, amax)];
        for (int i = 0; i < QK; i += W) {
            /* ggml's nearest_int: round to nearest even through 1.5 * 2^23 */
            const vf v = load(x + i) * iscale + 12582912.0f;
            vi q = ((vi)v & 0x007fffff) - 0x00400000;
            const vi over = q > 127;
            q = (q & ~over) | (127 & over);
            const vb q8 = __builtin_convertvector(q, vb);
            memcpy(a + i, &q8, sizeof q8);
            const int16_t sum = lane_sum(q);
            memcpy(a + ACT_BSUMS + 2 * (i / W), &sum, sizeof sum);
        }
        for (int j = 0; j < 8; j++) {
            int16_t s16[2], s32;
            memcpy(s16, a + ACT_BSUMS + 4 * j, sizeof s16);
            s32 = (int16_t)(s16[0] + s16[1]);
            memcpy(a + ACT_BSUM32 + 2 * j, &s32, sizeof s32);
        }
        const float d = 1.0f / iscale;
        memcpy(a + ACT_D, &d, sizeof d);
    }
}

/* ---- dequantized rows (ggml's dequantize_row_*, bit for bit) --------------------- */

void llmcore_qdequant_row_q4_k(const uint8_t *w, int64_t cols, float *out) {
    for (int64_t i = 0; i < cols / QK; i++, w += Q4K_BYTES, out += QK) {
        const float d = fp16_to_f32(w), dmin = fp16_to_f32(w + 2);
        uint64_t sc, mn;
        k4_scales(w + 4, &sc, &mn);
        const uint8_t *q = w + 16;
        for (int j = 0; j < 4; j++, q += 32) {
            const float d1 = d * byte_of(sc, 2 * j), m1 = dmin * byte_of(mn, 2 * j);
            const float d2 = d * byte_of(sc, 2 * j + 1), m2 = dmin * byte_of(mn, 2 * j + 1);
            float *y = out + 64 * j;
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0xf) - m1;
            for (int l = 0; l < 32; l++) y[32 + l] = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void llmcore_qdequant_row_q5_k(const uint8_t *w, int64_t cols, float *out) {
    for (int64_t i = 0; i < cols / QK; i++, w += Q5K_BYTES, out += QK) {
        const float d = fp16_to_f32(w), dmin = fp16_to_f32(w + 2);
        uint64_t sc, mn;
        k4_scales(w + 4, &sc, &mn);
        const uint8_t *qh = w + 16, *q = w + 48;
        for (int j = 0; j < 4; j++, q += 32) {
            const float d1 = d * byte_of(sc, 2 * j), m1 = dmin * byte_of(mn, 2 * j);
            const float d2 = d * byte_of(sc, 2 * j + 1), m2 = dmin * byte_of(mn, 2 * j + 1);
            float *y = out + 64 * j;
            for (int l = 0; l < 32; l++)
                y[l] = d1 * (float)((q[l] & 0xf) | ((qh[l] >> (2 * j)) & 1) << 4) - m1;
            for (int l = 0; l < 32; l++)
                y[32 + l] = d2 * (float)((q[l] >> 4) | ((qh[l] >> (2 * j + 1)) & 1) << 4) - m2;
        }
    }
}

void llmcore_qdequant_row_q6_k(const uint8_t *w, int64_t cols, float *out) {
    for (int64_t i = 0; i < cols / QK; i++, w += Q6K_BYTES, out += QK) {
        const float d = fp16_to_f32(w + 208);
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = w + 64 * n, *qh = w + 128 + 32 * n;
            float *y = out + 128 * n;
            for (int l = 0; l < 32; l++) {
                const int g = 8 * n + l / 16;
                const int q1 = ((ql[l] & 0xf) | (qh[l] & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * (float)sc[g] * (float)q1;
                y[l + 32] = d * (float)sc[g + 2] * (float)q2;
                y[l + 64] = d * (float)sc[g + 4] * (float)q3;
                y[l + 96] = d * (float)sc[g + 6] * (float)q4;
            }
        }
    }
}

/* ---- the dot products ------------------------------------------------------------ */

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* tree(G) of four lanes: (g0 + g2) + (g1 + g3) */
static inline float tree4(const float *g) { return (g[0] + g[2]) + (g[1] + g[3]); }

#if defined(QK_AVX512) || defined(QK_AVX2)
/* tree of eight lanes (l and l + 4, then tree4) */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* ---- AVX-512 --------------------------------------------------------------------- */
#if defined(QK_AVX512)

#if defined(__AVX512VNNI__)
#define DPWSSD(acc, x, y) _mm512_dpwssd_epi32((acc), (x), (y))
#else
#define DPWSSD(acc, x, y) _mm512_add_epi32((acc), _mm512_madd_epi16((x), (y)))
#endif

static inline float hsum16(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}

/* A 512-bit vector of two 256-bit halves. */
static inline __m512i halves(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The 32 bytes at p in both halves. */
static inline __m512i twice(const uint8_t *p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
}

/* a | (b & c), one vpternlogd */
static inline __m512i or_and(__m512i a, __m512i b, __m512i c) {
    return _mm512_ternarylogic_epi32(a, b, c, 0xf8);
}

/* Prefetch the cache lines that start in [p, p + bytes), each line once. A tile reads
 * its rows side by side, four short streams that the hardware prefetcher follows
 * badly; so each block step prefetches as many bytes of the next tile (the rows after
 * this one) in the order of memory: one long stream, a tile ahead. (Prefetching a line
 * twice, the end of one step and the start of the next, halved the bandwidth.) */
static inline void prefetch_bytes(const uint8_t *p, int64_t bytes) {
    const uintptr_t end = (uintptr_t)p + (uintptr_t)bytes;
    for (uintptr_t line = ((uintptr_t)p + 63) & ~(uintptr_t)63; line < end; line += 64)
        __builtin_prefetch((const void *)line, 0, 3);
}

/* p[t] += the products of 64 unpacked weights q (int16 scales s) and the 64
 * activations at x + t * a_row, for each of the nt activation rows. */
static ALWAYS_INLINE void dot64(__m512i *p, const int nt, __m512i q, __m512i s, const uint8_t *x,
                                int64_t a_row) {
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++) {
        const __m512i xt = _mm512_loadu_si512((const void *)(x + t * a_row));
        p[t] = DPWSSD(p[t], _mm512_maddubs_epi16(q, xt), s);
    }
}

/* Q4_K (q5 = 0) or Q5_K (q5 = 1): nr weight rows against nt activation rows, block
 * by block. The mins of the nr rows go together: row r's four G lanes are lanes
 * 4r..4r+3 of G[t]. */
static ALWAYS_INLINE void tile_q45k(int64_t nb, const uint8_t *w, int64_t w_row, const int nr,
                                    const uint8_t *a, int64_t a_row, const int nt, float *out,
                                    int64_t out_stride, const int q5) {
    const int64_t wb = q5 ? Q5K_BYTES : Q4K_BYTES;
    const __m512i low4 = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
    const __m512i nibble_shift = halves(_mm256_setzero_si256(), _mm256_set1_epi16(4));
    /* Q5_K: bits 2k and 2k + 1 of qh to bit 4 (left for k < 2, right after) */
    const __m512i hshift[4] = {
        halves(_mm256_set1_epi16(4), _mm256_set1_epi16(3)),
        halves(_mm256_set1_epi16(2), _mm256_set1_epi16(1)),
        halves(_mm256_set1_epi16(0), _mm256_set1_epi16(1)),
        halves(_mm256_set1_epi16(2), _mm256_set1_epi16(3)),
    };
    /* vpshufb picks: int16 scale 2k in the low half, 2k + 1 in the high half */
    __m512i pick[4];
    for (int k = 0; k < 4; k++) {
        const int lo = 4 * k | (4 * k + 1) << 8, hi = lo + 0x0202;
        pick[k] = halves(_mm256_set1_epi32(lo | lo << 16), _mm256_set1_epi32(hi | hi << 16));
    }
    __m512 F[4][4], G[4];
    for (int t = 0; t < nt; t++) {
        G[t] = _mm512_setzero_ps();
        for (int r = 0; r < nr; r++) F[t][r] = _mm512_setzero_ps();
    }
    const __m512i quads = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (int64_t i = 0; i < nb; i++) {
        /* row r's mins (bytes) and dmin in lane r, merged in registers */
        __m256i mn4 = _mm256_setzero_si256();
        __m128 dmin4 = _mm_setzero_ps();
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *bw = w + r * w_row + i * wb;
            prefetch_bytes(w + nr * w_row + (i * nr + r) * wb, wb);
            const float d = fp16_to_f32(bw), dmin = fp16_to_f32(bw + 2);
            uint64_t sc, mn;
            k4_scales(bw + 4, &sc, &mn);
            const __m512i sc16 =
                _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
            mn4 = _mm256_mask_set1_epi64(mn4, (__mmask8)(1u << r), (long long)mn);
            dmin4 = _mm_mask_mov_ps(dmin4, (__mmask8)(1u << r), _mm_set1_ps(dmin));
            const uint8_t *qs = bw + (q5 ? 48 : 16);
            const __m512i qh = q5 ? twice(bw + 16) : low4;
            __m512i p[4];
            for (int t = 0; t < nt; t++) p[t] = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) { /* values 64k..64k+63 */
                __m512i q = _mm512_srlv_epi16(twice(qs + 32 * k), nibble_shift);
                q = _mm512_and_si512(q, low4);
                if (q5) {
                    const __m512i h = k < 2 ? _mm512_sllv_epi16(qh, hshift[k])
                                            : _mm512_srlv_epi16(qh, hshift[k]);
                    q = or_and(q, h, bit4);
                }
                const __m512i sk = _mm512_shuffle_epi8(sc16, pick[k]);
                dot64(p, nt, q, sk, a + i * ACT_BYTES + 64 * k, a_row);
            }
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const uint8_t *ab = a + t * a_row + i * ACT_BYTES;
                const float da = act_d(ab);
                const __m512 dd = _mm512_set1_ps(d * da);
                F[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t]), dd, F[t][r]);
            }
        }
        const __m512i mn16 = _mm512_cvtepu8_epi16(mn4);
        const __m512 dm = _mm512_permutexvar_ps(quads, _mm512_castps128_ps512(dmin4));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const uint8_t *ab = a + t * a_row + i * ACT_BYTES;
            const __m128i s32 = _mm_loadu_si128((const __m128i *)(ab + ACT_BSUM32));
            const __m512i m32 = _mm512_madd_epi16(mn16, _mm512_broadcast_i32x4(s32));
            const __m512 m = _mm512_cvtepi32_ps(m32);
            G[t] = _mm512_fmadd_ps(m, _mm512_mul_ps(dm, _mm512_set1_ps(act_d(ab))), G[t]);
        }
    }
    for (int t = 0; t < nt; t++) {
        float g[16];
        _mm512_storeu_ps(g, G[t]);
        for (int r = 0; r < nr; r++) out[t * out_stride + r] = hsum16(F[t][r]) - tree4(g + 4 * r);
    }
}

static ALWAYS_INLINE void tile_q6k(int64_t nb, const uint8_t *w, int64_t w_row, const int nr,
                                   const uint8_t *a, int64_t a_row, const int nt, float *out,
                                   int64_t out_stride) {
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    const __m512i shift_lo = halves(_mm256_set1_epi16(4), _mm256_set1_epi16(2));
    const __m512i shift_hi = halves(_mm256_set1_epi16(0), _mm256_set1_epi16(2));
    /* vpermw picks: scale 4k + j (one a 16 values) in 128-bit lane j */
    __m512i pick[4];
    for (int k = 0; k < 4; k++)
        pick[k] = _mm512_inserti32x4(
            _mm512_inserti32x4(
                _mm512_inserti32x4(_mm512_castsi128_si512(_mm_set1_epi16((short)(4 * k))),
                                   _mm_set1_epi16((short)(4 * k + 1)), 1),
                _mm_set1_epi16((short)(4 * k + 2)), 2),
            _mm_set1_epi16((short)(4 * k + 3)), 3);
    __m512 F[4][4];
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) F[t][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const uint8_t *bw = w + r * w_row + i * Q6K_BYTES;
            prefetch_bytes(w + nr * w_row + (i * nr + r) * Q6K_BYTES, Q6K_BYTES);
            const float d = fp16_to_f32(bw + 208);
            const __m128i sc8 = _mm_loadu_si128((const __m128i *)(bw + 192));
            const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
            const __m256i sc32 = _mm256_slli_epi16(sc16, 5); /* the -32 offset: 32 * scale */
            const __m512i sc16z = _mm512_zextsi256_si512(sc16);
            __m512i p[4];
            for (int t = 0; t < nt; t++) p[t] = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) { /* values 64k..64k+63 */
                const int n = k / 2;
                const __m512i ql = _mm512_loadu_si512((const void *)(bw + 64 * n));
                const __m512i qh = twice(bw + 128 + 32 * n);
                const __m512i q =
                    k % 2 == 0 ? or_and(_mm512_and_si512(ql, low4), _mm512_sllv_epi16(qh, shift_lo),
                                        bits45)
                               : or_and(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                        _mm512_srlv_epi16(qh, shift_hi), bits45);
                const __m512i sk = _mm512_permutexvar_epi16(pick[k], sc16z);
                dot64(p, nt, q, sk, a + i * ACT_BYTES + 64 * k, a_row);
            }
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const uint8_t *ab = a + t * a_row + i * ACT_BYTES;
                const __m256i bs = _mm256_loadu_si256((const __m256i *)(ab + ACT_BSUMS));
                const __m512i pt =
                    _mm512_sub_epi32(p[t], _mm512_zextsi256_si512(_mm256_madd_epi16(sc32, bs)));
                const __m512 dd = _mm512_set1_ps(d * act_d(ab));
                F[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pt), dd, F[t][r]);
            }
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++) out[t * out_stride + r] = hsum16(F[t][r]);
}

/* ---- AVX2 ------------------------------------------------------------------------ */
#elif defined(QK_AVX2)

#if defined(__AVXVNNI__)
#define DPWSSD(acc, x, y) _mm256_dpwssd_avx_epi32((acc), (x), (y))
#else
#define DPWSSD(acc, x, y) _mm256_add_epi32((acc), _mm256_madd_epi16((x), (y)))
#endif

/* Lanes 0..7 of the sixteen in lo, 8..15 in hi. */
static ALWAYS_INLINE void dot_halves(const __m256i *q, const __m256i *s, const uint8_t *ab,
                                     __m256i *lo, __m256i *hi) {
    __m256i p0 = _mm256_setzero_si256(), p1 = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(ab + 64 * k));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(ab + 64 * k + 32));
        p0 = DPWSSD(p0, _mm256_maddubs_epi16(q[2 * k], x0), s[2 * k]);
        p1 = DPWSSD(p1, _mm256_maddubs_epi16(q[2 * k + 1], x1), s[2 * k + 1]);
    }
    *lo = p0;
    *hi = p1;
}

static ALWAYS_INLINE void row_q45k(int64_t nb, const uint8_t *w, const uint8_t *a, int64_t a_row,
                                   const int nt, float *out, int64_t out_stride, const int q5) {
    const int64_t wb = q5 ? Q5K_BYTES : Q4K_BYTES;
    const __m256i low4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
    __m256 F0[4], F1[4];
    __m128 G[4];
    for (int t = 0; t < nt; t++) {
        F0[t] = F1[t] = _mm256_setzero_ps();
        G[t] = _mm_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *bw = w + i * wb;
        const float d = fp16_to_f32(bw), dmin = fp16_to_f32(bw + 2);
        uint64_t sc, mn;
        k4_scales(bw + 4, &sc, &mn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn));
        const uint8_t *qs = bw + (q5 ? 48 : 16);
        const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(bw + 16)) : low4;
        __m256i q[8], s[8];
        for (int j = 0; j < 8; j++) s[j] = _mm256_set1_epi16(byte_of(sc, j));
        for (int k = 0; k < 4; k++) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
            q[2 * k] = _mm256_and_si256(b, low4);
            q[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
            if (q5) {
                /* bit j of qh to bit 4 */
                const __m256i h0 = 2 * k <= 4 ? _mm256_slli_epi16(qh, 4 - 2 * k)
                                              : _mm256_srli_epi16(qh, 2 * k - 4);
                const __m256i h1 = 2 * k + 1 <= 4 ? _mm256_slli_epi16(qh, 3 - 2 * k)
                                                  : _mm256_srli_epi16(qh, 2 * k - 3);
                q[2 * k] = _mm256_or_si256(q[2 * k], _mm256_and_si256(h0, bit4));
                q[2 * k + 1] = _mm256_or_si256(q[2 * k + 1], _mm256_and_si256(h1, bit4));
            }
        }
        for (int t = 0; t < nt; t++) {
            const uint8_t *ab = a + t * a_row + i * ACT_BYTES;
            __m256i p0, p1;
            dot_halves(q, s, ab, &p0, &p1);
            const float da = act_d(ab);
            const __m256 dd = _mm256_set1_ps(d * da);
            F0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), dd, F0[t]);
            F1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), dd, F1[t]);
            const __m128i s32 = _mm_loadu_si128((const __m128i *)(ab + ACT_BSUM32));
            const __m128 m = _mm_cvtepi32_ps(_mm_madd_epi16(mn16, s32));
            G[t] = _mm_fmadd_ps(m, _mm_set1_ps(dmin * da), G[t]);
        }
    }
    for (int t = 0; t < nt; t++) {
        float g[4];
        _mm_storeu_ps(g, G[t]);
        out[t * out_stride] = hsum8(_mm256_add_ps(F0[t], F1[t])) - tree4(g);
    }
}

static ALWAYS_INLINE void row_q6k(int64_t nb, const uint8_t *w, const uint8_t *a, int64_t a_row,
                                  const int nt, float *out, int64_t out_stride) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    __m256 F0[4], F1[4];
    for (int t = 0; t < nt; t++) F0[t] = F1[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *bw = w + i * Q6K_BYTES;
        const float d = fp16_to_f32(bw + 208);
        const int8_t *sc = (const int8_t *)(bw + 192);
        const __m256i sc32 = _mm256_slli_epi16(
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(bw + 192))), 5);
        __m256i q[8], s[8];
        for (int j = 0; j < 8; j++)
            s[j] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * j + 1]), _mm_set1_epi16(sc[2 * j]));
        for (int n = 0; n < 2; n++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(bw + 64 * n));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(bw + 64 * n + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)(bw + 128 + 32 * n));
            const __m256i l0h = _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4);
            const __m256i l1h = _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4);
            q[4 * n] = _mm256_or_si256(_mm256_and_si256(l0, low4),
                                       _mm256_and_si256(_mm256_slli_epi16(h, 4), bits45));
            q[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(l1, low4),
                                           _mm256_and_si256(_mm256_slli_epi16(h, 2), bits45));
            q[4 * n + 2] = _mm256_or_si256(l0h, _mm256_and_si256(h, bits45));
            q[4 * n + 3] = _mm256_or_si256(l1h, _mm256_and_si256(_mm256_srli_epi16(h, 2), bits45));
        }
        for (int t = 0; t < nt; t++) {
            const uint8_t *ab = a + t * a_row + i * ACT_BYTES;
            __m256i p0, p1;
            dot_halves(q, s, ab, &p0, &p1);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(ab + ACT_BSUMS));
            p0 = _mm256_sub_epi32(p0, _mm256_madd_epi16(sc32, bs));
            const __m256 dd = _mm256_set1_ps(d * act_d(ab));
            F0[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), dd, F0[t]);
            F1[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), dd, F1[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t * out_stride] = hsum8(_mm256_add_ps(F0[t], F1[t]));
}

/* ---- portable C ------------------------------------------------------------------ */
#else

/* A weight block unpacked: unsigned values, a scale for each 16 values, mins (Q4_K/Q5_K). */
typedef struct {
    uint8_t q[QK];
    int16_t sc[16], mn[8];
    float d, dmin;
} kblock;

static void unpack_q45k(const uint8_t *bw, int q5, kblock *b) {
    b->d = fp16_to_f32(bw);
    b->dmin = fp16_to_f32(bw + 2);
    uint64_t sc, mn;
    k4_scales(bw + 4, &sc, &mn);
    for (int j = 0; j < 8; j++) {
        b->sc[2 * j] = b->sc[2 * j + 1] = byte_of(sc, j);
        b->mn[j] = byte_of(mn, j);
    }
    const uint8_t *qh = bw + 16, *qs = bw + (q5 ? 48 : 16);
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 32; l++) {
            const int h0 = q5 ? ((qh[l] >> (2 * k)) & 1) << 4 : 0;
            const int h1 = q5 ? ((qh[l] >> (2 * k + 1)) & 1) << 4 : 0;
            b->q[64 * k + l] = (uint8_t)((qs[32 * k + l] & 0xf) | h0);
            b->q[64 * k + 32 + l] = (uint8_t)((qs[32 * k + l] >> 4) | h1);
        }
}

static void unpack_q6k(const uint8_t *bw, kblock *b) {
    b->d = fp16_to_f32(bw + 208);
    b->dmin = 0.0f;
    for (int g = 0; g < 16; g++) b->sc[g] = (int8_t)bw[192 + g];
    for (int n = 0; n < 2; n++) {
        const uint8_t *ql = bw + 64 * n, *qh = bw + 128 + 32 * n;
        uint8_t *q = b->q + 128 * n;
        for (int l = 0; l < 32; l++) {
            q[l] = (uint8_t)((ql[l] & 0xf) | (qh[l] & 3) << 4);
            q[l + 32] = (uint8_t)((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
    }
}

static inline int16_t act_i16(const uint8_t *ab, int offset, int j) {
    int16_t s;
    memcpy(&s, ab + offset + 2 * j, sizeof s);
    return s;
}

static inline float tree16(const float *f) {
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = f[l] + f[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return tree4(s4);
}

/* One block against one activation block: F and G as the top of the file says. */
static void dot_block(const kblock *b, const uint8_t *ab, int q6, float *F, float *G) {
    const int8_t *x = (const int8_t *)ab;
    int32_t P[16];
    for (int l = 0; l < 16; l++) {
        int32_t p = 0;
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 4; j++) {
                const int v = 64 * k + 4 * l + j;
                p += b->sc[v / 16] * b->q[v] * x[v];
            }
        P[l] = p;
    }
    const float da = act_d(ab);
    if (q6)
        for (int l = 0; l < 8; l++)
            P[l] -= 32 * (b->sc[2 * l] * act_i16(ab, ACT_BSUMS, 2 * l) +
                          b->sc[2 * l + 1] * act_i16(ab, ACT_BSUMS, 2 * l + 1));
    const float dd = b->d * da;
    for (int l = 0; l < 16; l++) F[l] = __builtin_fmaf((float)P[l], dd, F[l]);
    if (!q6) {
        const float dm = b->dmin * da;
        for (int j = 0; j < 4; j++) {
            const int32_t m = b->mn[2 * j] * act_i16(ab, ACT_BSUM32, 2 * j) +
                              b->mn[2 * j + 1] * act_i16(ab, ACT_BSUM32, 2 * j + 1);
            G[j] = __builtin_fmaf((float)m, dm, G[j]);
        }
    }
}

static void row_k(int type, int64_t nb, const uint8_t *w, const uint8_t *a, int64_t a_row, int nt,
                  float *out, int64_t out_stride) {
    float F[4][16] = {{0}}, G[4][4] = {{0}};
    const int64_t wb = type == 4 ? Q4K_BYTES : type == 5 ? Q5K_BYTES : Q6K_BYTES;
    kblock b;
    for (int64_t i = 0; i < nb; i++) {
        if (type == 6)
            unpack_q6k(w + i * wb, &b);
        else
            unpack_q45k(w + i * wb, type == 5, &b);
        for (int t = 0; t < nt; t++)
            dot_block(&b, a + t * a_row + i * ACT_BYTES, type == 6, F[t], G[t]);
    }
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = type == 6 ? tree16(F[t]) : tree16(F[t]) - tree4(G[t]);
}

static inline void row_q45k(int64_t nb, const uint8_t *w, const uint8_t *a, int64_t a_row, int nt,
                            float *out, int64_t out_stride, int q5) {
    row_k(q5 ? 5 : 4, nb, w, a, a_row, nt, out, out_stride);
}

static inline void row_q6k(int64_t nb, const uint8_t *w, const uint8_t *a, int64_t a_row, int nt,
                           float *out, int64_t out_stride) {
    row_k(6, nb, w, a, a_row, nt, out, out_stride);
}
#endif

#if !defined(QK_AVX512)
/* AVX2 and portable C: a tile row by row. */
static ALWAYS_INLINE void tile_q45k(int64_t nb, const uint8_t *w, int64_t w_row, const int nr,
                                    const uint8_t *a, int64_t a_row, const int nt, float *out,
                                    int64_t out_stride, const int q5) {
    for (int r = 0; r < nr; r++) row_q45k(nb, w + r * w_row, a, a_row, nt, out + r, out_stride, q5);
}

static ALWAYS_INLINE void tile_q6k(int64_t nb, const uint8_t *w, int64_t w_row, const int nr,
                                   const uint8_t *a, int64_t a_row, const int nt, float *out,
                                   int64_t out_stride) {
    for (int r = 0; r < nr; r++) row_q6k(nb, w + r * w_row, a, a_row, nt, out + r, out_stride);
}
#endif

/* ---- the tiles (llmcore_qtile_fn) ------------------------------------------------ */

/* type (4, 5, 6), nrows and ntok as constants for the inlined tile, so that its
 * accumulators stay in registers */
static ALWAYS_INLINE void tile_nt(const int type, int64_t nb, const uint8_t *w, int64_t w_row,
                                  const int nr, const uint8_t *a, int64_t a_row, const int nt,
                                  float *out, int64_t out_stride) {
    if (type == 6)
        tile_q6k(nb, w, w_row, nr, a, a_row, nt, out, out_stride);
    else
        tile_q45k(nb, w, w_row, nr, a, a_row, nt, out, out_stride, type == 5);
}

static ALWAYS_INLINE void tile_k(const int type, int64_t cols, const uint8_t *w,
                                 int64_t w_row_bytes, int nrows, const uint8_t *a,
                                 int64_t a_row_bytes, int ntok, float *out, int64_t out_stride) {
    const int64_t nb = cols / QK;
    /* the contract is 1..4 rows and tokens; more are taken four at a time */
    for (int r0 = 0; r0 < nrows; r0 += 4)
        for (int t0 = 0; t0 < ntok; t0 += 4) {
            const uint8_t *wr = w + r0 * w_row_bytes, *at = a + t0 * a_row_bytes;
            float *o = out + t0 * out_stride + r0;
            const int nr = nrows - r0 < 4 ? nrows - r0 : 4, nt = ntok - t0 < 4 ? ntok - t0 : 4;
#define NT(r, t) tile_nt(type, nb, wr, w_row_bytes, r, at, a_row_bytes, t, o, out_stride)
#define NR(r)                    \
    switch (nt) {                \
    case 1: NT(r, 1); break;     \
    case 2: NT(r, 2); break;     \
    case 3: NT(r, 3); break;     \
    default: NT(r, 4); break;    \
    }
            switch (nr) {
            case 1: NR(1) break;
            case 2: NR(2) break;
            case 3: NR(3) break;
            default: NR(4) break;
            }
#undef NR
#undef NT
        }
}
void llmcore_qtile_q4_k(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile_k(4, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

void llmcore_qtile_q5_k(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile_k(5, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

void llmcore_qtile_q6_k(int64_t cols, const uint8_t *w, int64_t w_row_bytes, int nrows,
                        const uint8_t *a, int64_t a_row_bytes, int ntok, float *out,
                        int64_t out_stride) {
    tile_k(6, cols, w, w_row_bytes, nrows, a, a_row_bytes, ntok, out, out_stride);
}

/* quant.h's names for the dequantized rows */
void llmcore_qdequant_q4_k(const uint8_t *row, int64_t cols, float *out) {
    llmcore_qdequant_row_q4_k(row, cols, out);
}

void llmcore_qdequant_q5_k(const uint8_t *row, int64_t cols, float *out) {
    llmcore_qdequant_row_q5_k(row, cols, out);
}

void llmcore_qdequant_q6_k(const uint8_t *row, int64_t cols, float *out) {
    llmcore_qdequant_row_q6_k(row, cols, out);
}

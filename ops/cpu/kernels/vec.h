/* Vector helpers shared by the CPU kernels: GCC/Clang vector extensions, so one
 * source serves every target (-march=native picks the instructions). */
#pragma once
#include <stdint.h>
#include <string.h>

#define W 16    /* floats per vector */

/* GCC/Clang vector extensions: one 64-byte vector, whatever the target makes of it
 * (one AVX-512 register, two AVX2 registers, four NEON registers). */
typedef float vf __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));

#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle((a), (b), (vi){__VA_ARGS__})
#endif

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline vf vfma(vf a, vf b, vf c) {
    vf r;
    for (int i = 0; i < W; i++) r[i] = __builtin_fmaf(a[i], b[i], c[i]);
    return r;
}

/* Lane-wise mask ? yes : no (C has no vector ternary). */
static inline vf vselect(vi mask, vf yes, vf no) {
    return (vf)(((vi)yes & mask) | ((vi)no & ~mask));
}

/* exp(x) lane-wise: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for
 * exp(r) (Cephes' coefficients), and 2^n built in the exponent bits. Relative error
 * below 3e-7 over [-87, 88]; 0 below -87 (beside a softmax's max term, 1, that is
 * nothing), and x is clamped to 88 above (about 1.7e38, not inf). */
static inline vf vexp(vf x) {
    const vi tiny = x < splat(-87.0f);
    x = vselect(tiny, splat(-87.0f), x);
    x = vselect(x > splat(88.0f), splat(88.0f), x);
    /* Round to nearest by the 1.5 * 2^23 trick. */
    const vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const vf r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    vf p = splat(1.3981999507e-3f);
    p = vfma(p, r, splat(8.3334519073e-3f));
    p = vfma(p, r, splat(4.1665795894e-2f));
    p = vfma(p, r, splat(1.6666665459e-1f));
    p = vfma(p, r, splat(5.0000001201e-1f));
    p = vfma(p * r, r, r) + 1.0f;
    const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return vselect(tiny, splat(0.0f), p * scale);
}

/* tanh(x) lane-wise (Cephes' tanhf): x + x^3 P(x^2) for |x| < 0.625, else
 * 1 - 2 / (exp(2|x|) + 1) with the sign of x. Absolute error below 2e-7 (the
 * vector exp's), which is what a soft cap's c * tanh(s / c) needs: the softmax
 * sees absolute errors of its scores. */
static inline vf vtanh(vf x) {
    const vi negative = x < splat(0.0f);
    const vf ax = vselect(negative, -x, x);
    const vf s = x * x;
    vf p = splat(-5.70498872745e-3f);
    p = vfma(p, s, splat(2.06390887954e-2f));
    p = vfma(p, s, splat(-5.37397155531e-2f));
    p = vfma(p, s, splat(1.33314422036e-1f));
    p = vfma(p, s, splat(-3.33332819422e-1f));
    const vf small = vfma(p * s, x, x);
    const vf big = splat(1.0f) - splat(2.0f) / (vexp(ax + ax) + 1.0f);
    return vselect(ax < splat(0.625f), small, vselect(negative, -big, big));
}

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < W; i++) s += v[i];
    return s;
}

/* --- KV cache elements: float32, float16 or bfloat16 (KV_F32, KV_F16, KV_BF16) ---
 *
 * The activations stay float32; a cache may store its elements in 16 bits. Loads
 * convert exactly (every float16 and bfloat16 value is a float32 value); stores
 * round to nearest, ties to even, as torch's `.to(dtype)` does (NaN stays a NaN,
 * its payload aside). F16C / AVX-512F convert float16 where the build has them,
 * portable C otherwise: the results are the same bits. */
enum { KV_F32 = 0, KV_F16 = 1, KV_BF16 = 2 };

typedef uint16_t vh __attribute__((vector_size(32), aligned(2))); /* 16 halves */
typedef uint32_t vu __attribute__((vector_size(64)));

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

static inline vf bits_to_vf(vu u) { vf f; memcpy(&f, &u, sizeof f); return f; }
static inline vu vf_to_bits(vf f) { vu u; memcpy(&u, &f, sizeof u); return u; }
static inline vu vselect_u(vi mask, vu yes, vu no) { return (yes & (vu)mask) | (no & ~(vu)mask); }

static inline vf load_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    return bits_to_vf(__builtin_convertvector(h, vu) << 16);
}

/* float32 -> float16 bits, ties to even: overflow to infinity, float16 subnormals,
 * a NaN stays a (quiet) NaN. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x1ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* from 65520 up: infinity */
    uint32_t q, rest, half;
    if (a >= 0x38800000u) { /* a float16 normal: rebias the exponent by 15 - 127 */
        const uint32_t r = a - 0x38000000u;
        q = r >> 13, rest = r & 0x1fffu, half = 0x1000u;
    } else if (a > 0x33000000u) { /* a subnormal: the value in units of 2^-24 */
        const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(a >> 23); /* 14 .. 24 */
        q = mant >> shift, rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    } else { /* at most 2^-25: ties to the even zero */
        return (uint16_t)sign;
    }
    q += rest > half || (rest == half && (q & 1u)); /* a carry moves into the exponent */
    return (uint16_t)(sign | q);
}

/* float16 <-> float32, sixteen lanes: one AVX-512F instruction, two F16C ones, or
 * portable C. */
#if defined(__AVX512F__)
static inline vf load_f16(const uint16_t *p) {
    const __m512 r = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    vf f;
    memcpy(&f, &r, sizeof f);
    return f;
}
static inline vh to_f16(vf x) {
    vh out;
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps((const float *)&x),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    memcpy(&out, &h, sizeof out);
    return out;
}
#elif defined(__F16C__)
static inline vf load_f16(const uint16_t *p) {
    vf f;
    for (int i = 0; i < W; i += 8) {
        const __m128i part = _mm_loadu_si128((const __m128i *)(p + i));
        _mm256_storeu_ps((float *)&f + i, _mm256_cvtph_ps(part));
    }
    return f;
}
static inline vh to_f16(vf x) {
    vh out;
    for (int i = 0; i < W; i += 8) {
        const __m256 part = _mm256_loadu_ps((const float *)&x + i);
        _mm_storeu_si128((__m128i *)((uint16_t *)&out + i),
                         _mm256_cvtps_ph(part, _MM_FROUND_TO_NEAREST_INT));
    }
    return out;
}
#else
/* Exponent and mantissa shifted into float32 place, then scaled by 2^112 (exact:
 * normals and subnormals alike become the float32 of the same value); infinities
 * and NaNs get the all-ones exponent instead. */
static inline vf load_f16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    const vu u = __builtin_convertvector(h, vu);
    const vu magnitude = (u & 0x7fffu) << 13;
    const vu finite = vf_to_bits(bits_to_vf(magnitude) * 0x1p112f);
    const vi special = (vi)((u & 0x7fffu) >= 0x7c00u);
    return bits_to_vf(vselect_u(special, magnitude | 0x7f800000u, finite) | (u & 0x8000u) << 16);
}
static inline vh to_f16(vf x) {
    vh out;
    for (int i = 0; i < W; i++) out[i] = f32_to_f16(x[i]);
    return out;
}
#endif

/* Sixteen elements of a cache from element index i, as float32. */
static inline vf load_kv(const void *base, int64_t i, int kv_dtype) {
    if (kv_dtype == KV_F16) return load_f16((const uint16_t *)base + i);
    if (kv_dtype == KV_BF16) return load_bf16((const uint16_t *)base + i);
    return load((const float *)base + i);
}

/* float32 -> bfloat16 bits, ties to even; a NaN stays a (quiet) NaN. */
static inline vh to_bf16(vf x) {
    const vu u = vf_to_bits(x);
    const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const vi nan = (vi)((u & 0x7fffffffu) > 0x7f800000u);
    return __builtin_convertvector(vselect_u(nan, (u >> 16) | 0x40u, rounded), vh);
}

/* n float32 values into a cache slot of kv_dtype elements (rounded as above). */
static inline void write_kv(void *dst, const float *src, int64_t n, int kv_dtype) {
    if (kv_dtype == KV_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *out = dst;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const vh h = kv_dtype == KV_F16 ? to_f16(load(src + i)) : to_bf16(load(src + i));
        memcpy(out + i, &h, sizeof h);
    }
    if (i < n) { /* the tail, through a vector padded with zeros */
        vf x = splat(0.0f);
        memcpy(&x, src + i, (n - i) * sizeof(float));
        const vh h = kv_dtype == KV_F16 ? to_f16(x) : to_bf16(x);
        memcpy(out + i, &h, (n - i) * sizeof(uint16_t));
    }
}

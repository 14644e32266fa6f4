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

/* The framework's own layouts (quantized activation rows), the helpers the tile files
 * share (fp16 conversions, weight prefetch), and the tile functions of quant_tiles.c:
 * for quant.c, quant_tiles.c and quant_k.c.
 *
 * Activation rows, each a multiple of 64 bytes (rows start 64-byte aligned):
 *   Q8_0 (for Q4_0 and Q8_0 weights): q[cols] offset by 128 (q + 128 as uint8: the
 *                                     unsigned operand of vpdpbusd), then d[cols / 32]
 *                                     float;
 *   Q8_1 (for Q4_1 weights):          q[cols] int8, d[cols / 32], s[cols / 32] float;
 *   I8 (for I8_ROW weights):          a 64-byte header (float scale, int32 sum of q),
 *                                     then q[cols] int8.
 * d and s hold fp16 values (ggml's numerics), widened to float.
 */
#pragma once
#include <stdint.h>
#include <string.h>

#include "quant.h"

#define QK 32          /* values per Q4_0 / Q4_1 / Q8_0 block */
#ifndef QTILE_TOKENS
#define QTILE_TOKENS 8 /* the most tokens a call of the framework's tiles takes */
#endif
#define QA_I8_HEAD 64  /* bytes before the q of an I8 activation row */

static inline int64_t qround64(int64_t bytes) { return (bytes + 63) & ~(int64_t)63; }

static inline const float *qa8_d(const uint8_t *a, int64_t cols) {
    return (const float *)(a + cols);
}
static inline const float *qa8_s(const uint8_t *a, int64_t cols) {
    return (const float *)(a + cols) + cols / QK;
}

static inline float qload_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Software prefetch of the weights about QPF_BYTES ahead (the rows of the tiles to
   come, as rows follow each other in memory) while a tile runs, where the weights
   stream from memory: with few tokens a tile is too quick for the hardware
   prefetchers, which also stop at each 4 KiB page (a 70 MB Q4_1 matrix: 33 GB/s on one
   thread with it, 14 without). A tile calls QPREFETCH(row + offset + qpf_ahead(...))
   for each of its rows as it reads a block. */
#ifndef QPF_BYTES
#define QPF_BYTES 16384
#endif
static inline int64_t qpf_ahead(int64_t row_bytes) {
    return (QPF_BYTES / row_bytes + 1) * row_bytes;
}
#if QPF_BYTES
#define QPREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define QPREFETCH(p) ((void)0)
#endif

/* fp16 <-> float32, exact widening and round-to-nearest-even narrowing: the compiler's
 * _Float16 where it has one, else bit arithmetic (LLMCORE_NO_FLOAT16 forces the latter,
 * for the tests). */
#if defined(__FLT16_MAX__) && !defined(LLMCORE_NO_FLOAT16)
static inline float qf16_to_f32(const uint8_t *p) {
    _Float16 h;
    memcpy(&h, p, sizeof h);
    return (float)h;
}
static inline float qround_f16(float x) { return (float)(_Float16)x; }
#else
static inline float qf16_bits_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    float v;
    if (exp == 0x1F) {
        const uint32_t bits = sign | 0x7F800000u | (man << 13);
        memcpy(&v, &bits, sizeof v);
        return v;
    }
    v = exp ? (float)(man | 0x400) * __builtin_ldexpf(1.0f, (int)exp - 25)
            : (float)man * __builtin_ldexpf(1.0f, -24);
    return sign ? -v : v;
}
static inline float qf16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return qf16_bits_to_f32(h);
}
/* Round to the nearest fp16 value (ties to even); overflow to infinity. */
static inline float qround_f16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint32_t sign = bits & 0x80000000u, abs = bits & 0x7FFFFFFFu;
    uint16_t h;
    if (abs >= 0x7F800000u) {
        h = (uint16_t)((sign >> 16) | (abs > 0x7F800000u ? 0x7E00 : 0x7C00));
    } else if (abs >= 0x477FF000u) { /* rounds to >= 65520: infinity */
        h = (uint16_t)((sign >> 16) | 0x7C00);
    } else if (abs < 0x38800000u) { /* below fp16's smallest normal: a multiple of 2^-24 */
        float a;
        memcpy(&a, &abs, sizeof a);
        h = (uint16_t)((sign >> 16) | (uint16_t)__builtin_rintf(a * 16777216.0f));
    } else {
        const uint32_t mant_odd = (abs >> 13) & 1;
        const uint32_t r = abs + 0xFFF + mant_odd - (112u << 23);
        h = (uint16_t)((sign >> 16) | (r >> 13));
    }
    return qf16_bits_to_f32(h);
}
#endif

/* The framework's tiles (quant_tiles.c), llmcore_qtile_fn each. */
void llmcore_qtile_q4_0(LLMCORE_QTILE_PARAMS);
void llmcore_qtile_q4_1(LLMCORE_QTILE_PARAMS);
void llmcore_qtile_q8_0(LLMCORE_QTILE_PARAMS);
void llmcore_qtile_i8_row(LLMCORE_QTILE_PARAMS);

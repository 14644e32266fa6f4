/* Gated activations (as ops/activation.py), float32: x is [rows, 2 * d] with a row
 * stride of its own, gate then up; out [rows, d] = act(gate) * up, one pass, no
 * temporary, with the vector exp of vec.h (relative error below 3e-7).
 * - silu_and_mul: silu(g) = g / (1 + exp(-g));
 * - gelu_tanh_and_mul: GELU's tanh approximation, 0.5 g (1 + tanh(u)) with
 *   u = sqrt(2 / pi) (g + 0.044715 g^3), which is g * sigmoid(2u): g / (1 + exp(-2u)).
 */
#include <stdint.h>

#include "vec.h"

/* Below -88, g * sigmoid(g) is under 1e-36 in magnitude: 0 there (vexp clamps its
 * argument at 88, which would leave g / (e^88 + 1), not small for huge |g|). */
static inline vf silu(vf g) {
    return vselect(g < splat(-88.0f), splat(0.0f), g / (vexp(-g) + 1.0f));
}

/* -2u = g (C1 + C2 g^2). Where it passes 88 (g below about -10) the result is under
 * 1e-36 in magnitude: 0 there, as in silu. */
#define GELU_C1 (-1.5957691216057308f)  /* -2 sqrt(2 / pi) */
#define GELU_C2 (-0.07135481627260025f) /* -2 sqrt(2 / pi) 0.044715 */

static inline vf gelu_tanh(vf g) {
    const vf z = g * (splat(GELU_C1) + splat(GELU_C2) * (g * g));
    return vselect(z > splat(88.0f), splat(0.0f), g / (vexp(z) + 1.0f));
}

/* The kernel `name`: out = act(gate) * up, rows in parallel. */
#define GATED(name, act)                                                                      \
    void name(const float *x, int64_t x_stride, float *out, int64_t rows, int64_t d) {        \
        _Pragma("omp parallel for schedule(static) if (rows * d >= (1 << 16))")               \
        for (int64_t r = 0; r < rows; r++) {                                                  \
            const float *gate = x + r * x_stride, *up = gate + d;                             \
            float *o = out + r * d;                                                           \
            int64_t i = 0;                                                                    \
            for (; i + W <= d; i += W) store(o + i, act(load(gate + i)) * load(up + i));      \
            for (; i < d; i++) o[i] = act(splat(gate[i]))[0] * up[i];                         \
        }                                                                                     \
    }

GATED(llmcore_silu_and_mul_f32, silu)
GATED(llmcore_gelu_tanh_and_mul_f32, gelu_tanh)

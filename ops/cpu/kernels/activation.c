/* SwiGLU (as ops/activation.py), float32: x is [rows, 2 * d] with a row stride of its
 * own, gate then up; out [rows, d] = silu(gate) * up, silu(g) = g / (1 + exp(-g)),
 * with the vector exp of vec.h (relative error below 3e-7). One pass, no temporary.
 */
#include <stdint.h>

#include "vec.h"

/* Below -88, g * sigmoid(g) is under 1e-36 in magnitude: 0 there (vexp clamps its
 * argument at 88, which would leave g / (e^88 + 1), not small for huge |g|). */
static inline vf silu(vf g) {
    return vselect(g < splat(-88.0f), splat(0.0f), g / (vexp(-g) + 1.0f));
}

void llmcore_silu_and_mul_f32(const float *x, int64_t x_stride, float *out, int64_t rows,
                              int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 16))
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = x + r * x_stride, *up = gate + d;
        float *o = out + r * d;
        int64_t i = 0;
        for (; i + W <= d; i += W) store(o + i, silu(load(gate + i)) * load(up + i));
        for (; i < d; i++) o[i] = silu(splat(gate[i]))[0] * up[i];
    }
}

/* SwiGLU (as ops/activation.py), float32: x is [rows, 2 * d] with a row stride of its
 * own, gate then up; out [rows, d] = silu(gate) * up, silu(g) = g / (1 + exp(-g)),
 * with the vector exp of vec.h (relative error below 3e-7). One pass, no temporary.
 */
#include <stdint.h>

#include "vec.h"

void llmcore_silu_and_mul_f32(const float *x, int64_t x_stride, float *out, int64_t rows,
                              int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d >= (1 << 16))
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = x + r * x_stride, *up = gate + d;
        float *o = out + r * d;
        int64_t i = 0;
        for (; i + W <= d; i += W) {
            const vf g = load(gate + i);
            store(o + i, g / (vexp(-g) + 1.0f) * load(up + i));
        }
        for (; i < d; i++) {
            vf g = splat(gate[i]);
            o[i] = (g / (vexp(-g) + 1.0f))[0] * up[i];
        }
    }
}

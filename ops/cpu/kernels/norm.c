/* RMSNorm and fused residual-add + RMSNorm (as ops/norm.py), float32.
 *
 * x, residual and out are [rows, dim] with row strides of their own (dim
 * contiguous). The sum of squares is accumulated in sixteen lanes and then added
 * up, so it differs from torch's mean in the last bits; the scaling is applied in
 * torch's order (x * rsqrt(mean + eps), rounded, then times the weight).
 */
#include <math.h>
#include <stdint.h>

#include "vec.h"

static inline void norm_row(const float *restrict x, const float *restrict weight, float eps,
                            float *restrict out, int64_t dim) {
    vf acc = splat(0.0f);
    int64_t d = 0;
    for (; d + W <= dim; d += W) {
        const vf v = load(x + d);
        acc = vfma(v, v, acc);
    }
    float squares = hsum(acc);
    for (; d < dim; d++) squares += x[d] * x[d];
    const float inv = 1.0f / sqrtf(squares / (float)dim + eps);
    d = 0;
    for (; d + W <= dim; d += W) store(out + d, load(weight + d) * (load(x + d) * inv));
    for (; d < dim; d++) out[d] = weight[d] * (x[d] * inv);
}

void llmcore_rms_norm_f32(const float *x, int64_t x_stride, const float *weight, float eps,
                          float *out, int64_t out_stride, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows * dim >= (1 << 18))
    for (int64_t r = 0; r < rows; r++)
        norm_row(x + r * x_stride, weight, eps, out + r * out_stride, dim);
}

/* summed = x + residual; out = rms_norm(summed) */
void llmcore_fused_add_rms_norm_f32(const float *x, int64_t x_stride, const float *residual,
                                    int64_t residual_stride, const float *weight, float eps,
                                    float *out, float *summed, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static) if (rows * dim >= (1 << 18))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_stride, *rr = residual + r * residual_stride;
        float *sr = summed + r * dim;
        int64_t d = 0;
        for (; d + W <= dim; d += W) store(sr + d, load(xr + d) + load(rr + d));
        for (; d < dim; d++) sr[d] = xr[d] + rr[d];
        norm_row(sr, weight, eps, out + r * dim, dim);
    }
}

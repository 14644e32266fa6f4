/* Rotary position embeddings applied in place (as ops/rotary.py).
 *
 * query [tokens, num_heads, head_dim] and key [tokens, num_kv_heads, head_dim] have
 * token and head strides of their own (the head dim contiguous). cos_sin is
 * [max_positions, rotary_dim]: cos of the half angles, then sin. The neox layout
 * rotates the pairs (i, i + rotary_dim / 2), the GPT-J layout the pairs (2i, 2i + 1);
 * features past rotary_dim are left alone. A position outside the table makes the
 * call return -1 before anything is rotated. Built without floating-point
 * contraction, each output is `x1 * cos - x2 * sin` or `x2 * cos + x1 * sin` rounded
 * as torch rounds it: the result is bit-identical to the torch path.
 */
#include <stdint.h>

static void rotate(float *restrict x, const float *restrict cos, const float *restrict sin,
                   int half, int is_neox) {
    if (is_neox) {
        float *restrict x1 = x;
        float *restrict x2 = x + half;
#pragma omp simd
        for (int i = 0; i < half; i++) {
            const float a = x1[i], b = x2[i];
            x1[i] = a * cos[i] - b * sin[i];
            x2[i] = b * cos[i] + a * sin[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            const float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * cos[i] - b * sin[i];
            x[2 * i + 1] = b * cos[i] + a * sin[i];
        }
    }
}

int llmcore_rotary_embedding_f32(const int64_t *positions, float *query, int64_t q_stride_t,
                                 int64_t q_stride_h, int32_t num_heads, float *key,
                                 int64_t k_stride_t, int64_t k_stride_h, int32_t num_kv_heads,
                                 const float *cos_sin, int64_t num_positions, int32_t rotary_dim,
                                 int64_t num_tokens, int32_t is_neox) {
    for (int64_t t = 0; t < num_tokens; t++)
        if (positions[t] < 0 || positions[t] >= num_positions) return -1;
    const int half = rotary_dim / 2;
#pragma omp parallel for schedule(static) if (num_tokens >= 256)
    for (int64_t t = 0; t < num_tokens; t++) {
        const float *cos = cos_sin + positions[t] * rotary_dim;
        const float *sin = cos + half;
        for (int h = 0; h < num_heads; h++)
            rotate(query + t * q_stride_t + h * q_stride_h, cos, sin, half, is_neox);
        for (int h = 0; h < num_kv_heads; h++)
            rotate(key + t * k_stride_t + h * k_stride_h, cos, sin, half, is_neox);
    }
    return 0;
}

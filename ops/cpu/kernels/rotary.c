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
 *
 * llmcore_rotary_embedding_and_cache_f32 is that rotation followed by
 * llmcore_reshape_and_cache_f32 of kv_cache.c, token by token (the token's rotated
 * key row is written to its cache slot while it is still in L1): the same bits as
 * the two calls in sequence. It checks every position and every slot before it
 * touches anything.
 */
#include <stdint.h>

#include "vec.h"

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

/* Returns -1 for a position outside the table, -2 for a slot at or past num_slots
 * (or an unknown kv_dtype), 0 otherwise; heads are contiguous within a token. */
int llmcore_rotary_embedding_and_cache_f32(
    const int64_t *positions, float *query, int64_t q_stride_t, int32_t num_heads,
    int32_t head_dim, float *key, int64_t k_stride_t, const float *value, int64_t v_stride_t,
    int32_t num_kv_heads, int32_t kv_head_dim, const float *cos_sin, int64_t num_positions,
    int32_t rotary_dim, void *key_cache, void *value_cache, const int64_t *slot_mapping,
    int64_t num_slots, int32_t kv_dtype, int64_t num_tokens, int32_t is_neox) {
    for (int64_t t = 0; t < num_tokens; t++)
        if (positions[t] < 0 || positions[t] >= num_positions) return -1;
    if (kv_dtype != KV_F32 && kv_dtype != KV_F16 && kv_dtype != KV_BF16) return -2;
    for (int64_t t = 0; t < num_tokens; t++)
        if (slot_mapping[t] >= num_slots) return -2;
    const int half = rotary_dim / 2;
    const int64_t row = (int64_t)num_kv_heads * kv_head_dim;
    const int64_t row_bytes = row * (kv_dtype == KV_F32 ? sizeof(float) : sizeof(uint16_t));
#pragma omp parallel for schedule(static) if (num_tokens >= 256)
    for (int64_t t = 0; t < num_tokens; t++) {
        const float *cos = cos_sin + positions[t] * rotary_dim;
        const float *sin = cos + half;
        float *q = query + t * q_stride_t, *k = key + t * k_stride_t;
        for (int h = 0; h < num_heads; h++) rotate(q + h * head_dim, cos, sin, half, is_neox);
        for (int h = 0; h < num_kv_heads; h++)
            rotate(k + h * kv_head_dim, cos, sin, half, is_neox);
        const int64_t slot = slot_mapping[t];
        if (slot < 0) continue; /* a padding token: rotated, not cached */
        write_kv((char *)key_cache + slot * row_bytes, k, row, kv_dtype);
        write_kv((char *)value_cache + slot * row_bytes, value + t * v_stride_t, row, kv_dtype);
    }
    return 0;
}

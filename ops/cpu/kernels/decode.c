/* A whole decode step of a llama-family decoder stack in one call: for every layer,
 * norm, fused QKV matmul, rotary, KV cache write, paged attention, output
 * projection, norm, gate/up matmul, SiLU-and-mul, down matmul; then the final norm.
 *
 * It calls the same kernels the per-op path calls through torch (norm.c,
 * rotary.c, kv_cache.c, attention.c, activation.c, quant.c), on the same inputs in
 * the same order, so its result is bit-identical to that path; what it removes is
 * the Python and torch dispatch around ~10 ops per layer. Every matmul is a
 * `llmcore_qmatmul` over one or more weight parts written side by side into one
 * output row (q, k and v kept apart when their types differ).
 *
 * The KV caches may hold float16 or bfloat16 (kv_dtype): the cache write rounds
 * into them and attention reads them, the same calls the per-op path makes. A
 * layer may have a sliding window and a soft cap of its own.
 *
 * The caller owns every buffer: `scratch` holds the step's activations (size from
 * `llmcore_decode_scratch_floats`), so nothing is allocated per layer. */
#include <stdint.h>
#include <string.h>

#include "quant.h"

int llmcore_paged_attention_f32(const float *query, int64_t q_stride_t, int64_t q_stride_h,
                                const void *key_cache, const void *value_cache, int32_t kv_dtype,
                                const int32_t *block_tables, int64_t table_stride,
                                const int32_t *seq_lens, const int32_t *query_start_loc,
                                int32_t num_seqs, int32_t num_heads, int32_t num_kv_heads,
                                int32_t head_dim, int32_t block_size, float scale,
                                int32_t sliding_window, float soft_cap, float *out,
                                int64_t out_stride_t, int64_t out_stride_h);
int llmcore_reshape_and_cache_f32(const float *key, int64_t key_stride, const float *value,
                                  int64_t value_stride, void *key_cache, void *value_cache,
                                  const int64_t *slot_mapping, int64_t num_tokens,
                                  int64_t slot_size, int64_t num_slots, int32_t kv_dtype);
int llmcore_rotary_embedding_f32(const int64_t *positions, float *query, int64_t q_stride_t,
                                 int64_t q_stride_h, int32_t num_heads, float *key,
                                 int64_t k_stride_t, int64_t k_stride_h, int32_t num_kv_heads,
                                 const float *cos_sin, int64_t num_positions, int32_t rotary_dim,
                                 int64_t num_tokens, int32_t is_neox);
void llmcore_rms_norm_f32(const float *x, int64_t x_stride, const float *weight, float eps,
                          float *out, int64_t out_stride, int64_t rows, int64_t dim);
void llmcore_fused_add_rms_norm_f32(const float *x, int64_t x_stride, const float *residual,
                                    int64_t residual_stride, const float *weight, float eps,
                                    float *out, float *summed, int64_t rows, int64_t dim);
void llmcore_silu_and_mul_f32(const float *x, int64_t x_stride, float *out, int64_t rows,
                              int64_t d);

#define MAX_PARTS 3

/* x [n, in] -> out [n, sum of the parts' rows]: part i fills columns offset[i]... */
typedef struct llmcore_decode_linear {
    int64_t num_parts;
    const llmcore_qweight *part[MAX_PARTS];
    int64_t offset[MAX_PARTS];
    const float *bias; /* [out] or NULL */
} llmcore_decode_linear;

typedef struct llmcore_decode_layer {
    const float *input_norm, *post_norm; /* [hidden] */
    llmcore_decode_linear qkv, o, gate_up, down;
    void *key_cache, *value_cache; /* [num_blocks, block_size, kv_heads, head_dim] */
    int64_t sliding_window;        /* 0: full attention */
    float soft_cap;                /* 0: none */
} llmcore_decode_layer;

typedef struct llmcore_decode_model {
    int64_t num_layers, hidden, intermediate;
    int64_t num_heads, num_kv_heads, head_dim;
    int64_t block_size, num_slots; /* cache slots: num_blocks * block_size */
    int64_t kv_dtype;              /* the caches' elements: KV_F32, KV_F16 or KV_BF16 (vec.h) */
    float eps, scale;
    const float *cos_sin; /* [num_positions, rotary_dim] */
    int64_t num_positions, rotary_dim, is_neox;
    const float *final_norm;
    const llmcore_decode_layer *layers;
} llmcore_decode_model;

enum { DECODE_OK = 0, DECODE_MATMUL = 1, DECODE_POSITION = 2, DECODE_SLOT = 3, DECODE_ATTENTION = 4 };

static int64_t qkv_width(const llmcore_decode_model *m) {
    return (m->num_heads + 2 * m->num_kv_heads) * m->head_dim;
}

int64_t llmcore_decode_scratch_floats(const llmcore_decode_model *m, int64_t n) {
    /* residual, x, qkv, attention out, gate_up, silu out */
    const int64_t per_token = 2 * m->hidden + qkv_width(m) + m->num_heads * m->head_dim +
                              3 * m->intermediate;
    return n * per_token;
}

static int linear(const llmcore_decode_linear *l, const float *x, int64_t n, int64_t x_stride,
                  float *out, int64_t out_stride) {
    for (int64_t i = 0; i < l->num_parts; i++) {
        const float *bias = l->bias != NULL ? l->bias + l->offset[i] : NULL;
        if (llmcore_qmatmul(l->part[i], x, n, x_stride, bias, out + l->offset[i], out_stride))
            return DECODE_MATMUL;
    }
    return DECODE_OK;
}

/* `hidden` [n, hidden]: the token embeddings in, the final-normed states out.
 * Returns DECODE_OK, or the first failure (nothing past it ran). */
int llmcore_decode_step(const llmcore_decode_model *m, float *hidden, int64_t n,
                        const int64_t *positions, const int64_t *slot_mapping,
                        const int32_t *block_tables, int64_t table_stride,
                        const int32_t *seq_lens, float *scratch) {
    const int64_t h = m->hidden, d = m->head_dim, inter = m->intermediate;
    const int64_t qkv_w = qkv_width(m), q_size = m->num_heads * d;
    const int64_t kv_size = m->num_kv_heads * d;
    float *residual = scratch;
    float *x = residual + n * h;
    float *qkv = x + n * h;
    float *attn = qkv + n * qkv_w;
    float *gate_up = attn + n * q_size;
    float *act = gate_up + n * 2 * inter;
    for (int64_t i = 0; i < m->num_layers; i++) {
        const llmcore_decode_layer *layer = &m->layers[i];
        if (i == 0) {
            memcpy(residual, hidden, sizeof(float) * n * h);
            llmcore_rms_norm_f32(hidden, h, layer->input_norm, m->eps, x, h, n, h);
        } else {
            llmcore_fused_add_rms_norm_f32(hidden, h, residual, h, layer->input_norm, m->eps, x,
                                           residual, n, h);
        }
        int rc = linear(&layer->qkv, x, n, h, qkv, qkv_w);
        if (rc) return rc;
        float *q = qkv, *k = qkv + q_size, *v = k + kv_size;
        if (llmcore_rotary_embedding_f32(positions, q, qkv_w, d, (int32_t)m->num_heads, k, qkv_w,
                                         d, (int32_t)m->num_kv_heads, m->cos_sin,
                                         m->num_positions, (int32_t)m->rotary_dim, n,
                                         (int32_t)m->is_neox))
            return DECODE_POSITION;
        if (llmcore_reshape_and_cache_f32(k, qkv_w, v, qkv_w, layer->key_cache,
                                          layer->value_cache, slot_mapping, n, kv_size,
                                          m->num_slots, (int32_t)m->kv_dtype))
            return DECODE_SLOT;
        if (llmcore_paged_attention_f32(q, qkv_w, d, layer->key_cache, layer->value_cache,
                                        (int32_t)m->kv_dtype, block_tables, table_stride,
                                        seq_lens, NULL, (int32_t)n, (int32_t)m->num_heads,
                                        (int32_t)m->num_kv_heads, (int32_t)d,
                                        (int32_t)m->block_size, m->scale,
                                        (int32_t)layer->sliding_window, layer->soft_cap, attn,
                                        q_size, d))
            return DECODE_ATTENTION;
        rc = linear(&layer->o, attn, n, q_size, hidden, h);
        if (rc) return rc;
        llmcore_fused_add_rms_norm_f32(hidden, h, residual, h, layer->post_norm, m->eps, x,
                                       residual, n, h);
        rc = linear(&layer->gate_up, x, n, h, gate_up, 2 * inter);
        if (rc) return rc;
        llmcore_silu_and_mul_f32(gate_up, 2 * inter, act, n, inter);
        rc = linear(&layer->down, act, n, inter, hidden, h);
        if (rc) return rc;
    }
    /* The final norm: hidden + residual, normed, back into hidden. */
    llmcore_fused_add_rms_norm_f32(hidden, h, residual, h, m->final_norm, m->eps, x, residual,
                                   n, h);
    memcpy(hidden, x, sizeof(float) * n * h);
    return DECODE_OK;
}

/* Paged attention on the CPU, float32 queries, reading the KV cache where it lies
 * (its elements float32, float16 or bfloat16).
 *
 * The torch path gathers every sequence's keys and values into a padded batch
 * before one attention call: three passes over the cache bytes where one will
 * do. Here each (query token, kv head) pair walks its sequence's block table and
 * keeps an online softmax (running max, running sum, rescaled accumulator), so a
 * cached key or value is read once per step and nothing is written but `out`.
 *
 * Every pair is computed alone, in a fixed order, by one thread: the result for a
 * sequence does not depend on what else is in the batch.
 *
 * Layout (as ops/attention.py): a cache is [num_blocks, block_size, num_kv_heads,
 * head_dim], contiguous, of float32, float16 or bfloat16; query and out (float32) are [tokens, num_heads, head_dim] with the
 * given token and head strides (the head dim contiguous). Sequence s owns query
 * rows query_start_loc[s] .. query_start_loc[s + 1] - 1, which are the last q_len
 * of its seq_lens[s] tokens; row j attends to positions 0 .. seq_lens[s] - q_len + j
 * (the last sliding_window of them, where one is given).
 * A NULL query_start_loc means one query row per sequence (decode).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "vec.h"

#define MAX_GROUP 16
#define MAX_HEAD_DIM 256
#define TILE 16 /* keys per online-softmax step: one vector of scores */

#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* Sixteen vectors in, one out: lane t is the sum of the lanes of s[t]. A shuffle
 * tree (15 pairs of two-source shuffles and adds) instead of sixteen reductions. */
static inline vf sum16(const vf s[TILE]) {
    vf a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = SHUFFLE(s[2 * i], s[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21,
                       22, 23) +
               SHUFFLE(s[2 * i], s[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28,
                       29, 30, 31);
    /* a[i]: 8 partial sums of s[2i], then 8 of s[2i+1] */
    for (int i = 0; i < 4; i++)
        b[i] = SHUFFLE(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25,
                       26, 27) +
               SHUFFLE(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28,
                       29, 30, 31);
    /* b[i]: 4 partials each of s[4i .. 4i+3] */
    for (int i = 0; i < 2; i++)
        c[i] = SHUFFLE(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25,
                       28, 29) +
               SHUFFLE(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26,
                       27, 30, 31);
    /* c[i]: 2 partials each of s[8i .. 8i+7] */
    return SHUFFLE(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           SHUFFLE(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* One (query row, kv head): the `group` query heads that share the kv head, over
 * keys first_key .. num_keys - 1, a tile of up to 16 keys at a time (a tile never
 * crosses a block). Always inlined into callers that fix head_dim and kv_dtype, so
 * the loops over the head's vectors unroll and the element loads are one kind.
 * A 16-bit cache's elements are converted to float32 as they are loaded (each key
 * row once per tile; the tile's value rows once, into `vtile`), and from there the
 * arithmetic is the float32 cache's, operation for operation. */
static inline __attribute__((always_inline)) void attend(
    const float *restrict query, int64_t q_stride_h, const void *restrict key_cache,
    const void *restrict value_cache, const int kv_dtype, const int32_t *restrict table,
    int first_key, int num_keys, int kv_head, int group, int num_kv_heads, const int head_dim,
    int block_size, float scale, float soft_cap, float *restrict out, int64_t out_stride_h) {
    const int nv = head_dim / W;
    vf q[MAX_GROUP][MAX_HEAD_DIM / W];
    vf acc[MAX_GROUP][MAX_HEAD_DIM / W];
    vf prob[MAX_GROUP];
    vf partial[MAX_GROUP][TILE];
    float vtile[TILE][MAX_HEAD_DIM]; /* a 16-bit cache's tile of values, as float32 */
    float run_max[MAX_GROUP], run_sum[MAX_GROUP];
    const int64_t elem = kv_dtype == KV_F32 ? sizeof(float) : sizeof(uint16_t);
    const int64_t token_stride = (int64_t)num_kv_heads * head_dim;
    const int64_t block_stride = (int64_t)block_size * token_stride;

    for (int g = 0; g < group; g++) {
        const float *src = query + (int64_t)(kv_head * group + g) * q_stride_h;
        for (int c = 0; c < nv; c++) {
            q[g][c] = load(src + c * W) * scale;
            acc[g][c] = splat(0.0f);
        }
        run_max[g] = -INFINITY;
        run_sum[g] = 0.0f;
    }
    for (int start = first_key, n = 0; start < num_keys; start += n) {
        const int in_block = start % block_size;
        const int left = num_keys - start < TILE ? num_keys - start : TILE;
        n = left < block_size - in_block ? left : block_size - in_block;
        /* Element offset of the tile's first row in either cache. */
        const int64_t base = (int64_t)table[start / block_size] * block_stride +
                             (int64_t)in_block * token_stride + kv_head * head_dim;
        if (in_block + n == block_size && start + n < num_keys) {
            /* The next block is elsewhere in memory: ask for its first rows now, so
             * they arrive while this tile is computed. */
            const int64_t next =
                (int64_t)table[start / block_size + 1] * block_stride + kv_head * head_dim;
            const int ahead = block_size < TILE ? block_size : TILE;
            for (int t = 0; t < ahead; t++)
                for (int64_t b = 0; b < head_dim * elem; b += 64) {
                    const int64_t at = (next + t * token_stride) * elem + b;
                    __builtin_prefetch((const char *)key_cache + at);
                    __builtin_prefetch((const char *)value_cache + at);
                }
        }
        /* Scores: each key row loaded once for the group's heads; per head, sixteen
         * lane-wise products (two accumulators each) summed by one shuffle tree. */
        for (int t = 0; t < TILE; t++) {
            if (t >= n) {
                for (int g = 0; g < group; g++) partial[g][t] = splat(0.0f);
                continue;
            }
            const int64_t row = base + t * token_stride;
            vf key[MAX_HEAD_DIM / W];
            UNROLL for (int c = 0; c < nv; c++) key[c] = load_kv(key_cache, row + c * W, kv_dtype);
            if (kv_dtype != KV_F32) {
                UNROLL for (int c = 0; c < nv; c++)
                    store(vtile[t] + c * W, load_kv(value_cache, row + c * W, kv_dtype));
            }
            for (int g = 0; g < group; g++) {
                vf d0 = q[g][0] * key[0], d1 = splat(0.0f);
                UNROLL for (int c = 1; c < nv; c++) {
                    if (c % 2) d1 = vfma(q[g][c], key[c], d1);
                    else d0 = vfma(q[g][c], key[c], d0);
                }
                partial[g][t] = d0 + d1;
            }
        }
        for (int g = 0; g < group; g++) {
            vf s = sum16(partial[g]);
            if (soft_cap > 0.0f) s = vtanh(s / soft_cap) * soft_cap;
            for (int t = n; t < TILE; t++) s[t] = -INFINITY;
            float tile_max = s[0];
            for (int t = 1; t < TILE; t++) tile_max = s[t] > tile_max ? s[t] : tile_max;
            if (tile_max > run_max[g]) {
                const float correction = expf(run_max[g] - tile_max);
                run_sum[g] *= correction;
                UNROLL for (int c = 0; c < nv; c++) acc[g][c] *= correction;
                run_max[g] = tile_max;
            }
            const vf p = vexp(s - run_max[g]);
            float tile_sum = 0.0f;
            for (int t = 0; t < TILE; t++) tile_sum += p[t];
            run_sum[g] += tile_sum;
            prob[g] = p;
        }
        /* The tile's value rows: in the float32 cache, or converted in vtile. */
        const float *v = kv_dtype == KV_F32 ? (const float *)value_cache + base : vtile[0];
        const int64_t v_stride = kv_dtype == KV_F32 ? token_stride : MAX_HEAD_DIM;
        /* acc += p V, per head, the head's vectors held in registers across the tile
         * with even and odd keys in two sets of accumulators (independent chains). */
        for (int g = 0; g < group; g++) {
            vf a0[MAX_HEAD_DIM / W], a1[MAX_HEAD_DIM / W];
            UNROLL for (int c = 0; c < nv; c++) {
                a0[c] = acc[g][c];
                a1[c] = splat(0.0f);
            }
            int t = 0;
            for (; t + 1 < n; t += 2) {
                const vf p0 = splat(prob[g][t]), p1 = splat(prob[g][t + 1]);
                const float *v0 = v + t * v_stride, *v1 = v0 + v_stride;
                UNROLL for (int c = 0; c < nv; c++) {
                    a0[c] = vfma(p0, load(v0 + c * W), a0[c]);
                    a1[c] = vfma(p1, load(v1 + c * W), a1[c]);
                }
            }
            if (t < n) {
                const vf p0 = splat(prob[g][t]);
                UNROLL for (int c = 0; c < nv; c++)
                    a0[c] = vfma(p0, load(v + t * v_stride + c * W), a0[c]);
            }
            UNROLL for (int c = 0; c < nv; c++) acc[g][c] = a0[c] + a1[c];
        }
    }
    for (int g = 0; g < group; g++) {
        float *dst = out + (int64_t)(kv_head * group + g) * out_stride_h;
        const float inv = 1.0f / run_sum[g];
        for (int c = 0; c < nv; c++) store(dst + c * W, acc[g][c] * inv);
    }
}

#define ATTEND_ARGS                                                                            \
    const float *restrict query, int64_t q_stride_h, const void *restrict key_cache,           \
        const void *restrict value_cache, const int32_t *restrict table, int first_key,        \
        int num_keys, int kv_head, int group, int num_kv_heads, int head_dim, int block_size,  \
        float scale, float soft_cap, float *restrict out, int64_t out_stride_h
#define ATTEND_PASS(KV_DTYPE, HEAD_DIM)                                                        \
    query, q_stride_h, key_cache, value_cache, KV_DTYPE, table, first_key, num_keys, kv_head,  \
        group, num_kv_heads, HEAD_DIM, block_size, scale, soft_cap, out, out_stride_h
typedef void (*attend_fn_t)(ATTEND_ARGS);

/* attend_<cache dtype>_<head_dim>: the head sizes that most models use get their
 * own unrolled copy; the rest share one. */
#define ATTEND_VARIANTS(NAME, KV_DTYPE)                                                        \
    static void attend_##NAME##_64(ATTEND_ARGS) { (void)head_dim; attend(ATTEND_PASS(KV_DTYPE, 64)); } \
    static void attend_##NAME##_128(ATTEND_ARGS) { (void)head_dim; attend(ATTEND_PASS(KV_DTYPE, 128)); } \
    static void attend_##NAME##_any(ATTEND_ARGS) { attend(ATTEND_PASS(KV_DTYPE, head_dim)); }  \
    static attend_fn_t attend_##NAME(int head_dim) {                                           \
        return head_dim == 64 ? attend_##NAME##_64                                             \
               : head_dim == 128 ? attend_##NAME##_128 : attend_##NAME##_any;                  \
    }
ATTEND_VARIANTS(f32, KV_F32)
ATTEND_VARIANTS(f16, KV_F16)
ATTEND_VARIANTS(bf16, KV_BF16)

/* sliding_window W > 0: a row at position p sees keys p - W + 1 .. p only, and its
 * walk starts there (blocks before it are never read: the KV manager may have
 * freed them). soft_cap c > 0: scores (after `scale`) become c * tanh(score / c).
 * 0 means neither. The caches hold kv_dtype elements (KV_F32, KV_F16 or KV_BF16 of
 * vec.h); query and out are float32 whatever they hold. Returns 0, or -1 if a size
 * is past the stack buffers or kv_dtype is unknown (the caller checks first). */
int llmcore_paged_attention_f32(const float *query, int64_t q_stride_t, int64_t q_stride_h,
                                const void *key_cache, const void *value_cache, int32_t kv_dtype,
                                const int32_t *block_tables, int64_t table_stride,
                                const int32_t *seq_lens, const int32_t *query_start_loc,
                                int32_t num_seqs, int32_t num_heads, int32_t num_kv_heads,
                                int32_t head_dim, int32_t block_size, float scale,
                                int32_t sliding_window, float soft_cap, float *out,
                                int64_t out_stride_t, int64_t out_stride_h) {
    const int group = num_heads / num_kv_heads;
    if (group > MAX_GROUP || head_dim > MAX_HEAD_DIM || head_dim % W != 0 || block_size < 1)
        return -1;
    if (kv_dtype != KV_F32 && kv_dtype != KV_F16 && kv_dtype != KV_BF16) return -1;
    /* Rows from query_start_loc[0] on belong to the sequences; rows before it, if
     * any, to none, and they are not written. */
    const int first_row = query_start_loc != NULL ? query_start_loc[0] : 0;
    const int end_row = query_start_loc != NULL ? query_start_loc[num_seqs] : num_seqs;
    const int num_rows = end_row - first_row;
    int32_t *row_seq = malloc(sizeof(int32_t) * (num_rows > 0 ? num_rows : 1));
    if (row_seq == NULL) return -1;
    for (int s = 0; s < num_seqs; s++) {
        const int first = query_start_loc != NULL ? query_start_loc[s] : s;
        const int end = query_start_loc != NULL ? query_start_loc[s + 1] : s + 1;
        for (int t = first; t < end; t++) row_seq[t - first_row] = s;
    }
    const int64_t items = (int64_t)num_rows * num_kv_heads;
    const attend_fn_t attend_fn = kv_dtype == KV_F16    ? attend_f16(head_dim)
                                  : kv_dtype == KV_BF16 ? attend_bf16(head_dim)
                                                        : attend_f32(head_dim);

#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; item++) {
        const int t = first_row + (int)(item / num_kv_heads);
        const int kv_head = (int)(item % num_kv_heads);
        const int s = row_seq[t - first_row];
        const int first = query_start_loc != NULL ? query_start_loc[s] : s;
        const int q_len = query_start_loc != NULL ? query_start_loc[s + 1] - first : 1;
        const int num_keys = seq_lens[s] - q_len + (t - first) + 1;
        const int first_key =
            sliding_window > 0 && num_keys > sliding_window ? num_keys - sliding_window : 0;
        attend_fn(query + t * q_stride_t, q_stride_h, key_cache, value_cache,
                  block_tables + s * table_stride, first_key, num_keys, kv_head, group,
                  num_kv_heads, head_dim, block_size, scale, soft_cap, out + t * out_stride_t,
                  out_stride_h);
    }
    free(row_seq);
    return 0;
}

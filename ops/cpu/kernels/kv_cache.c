/* Writing a step's keys and values into the paged KV cache (as ops/kv_cache.py).
 *
 * key and value are [tokens, num_kv_heads, head_dim] with a token stride of their
 * own (they are usually column slices of the fused qkv projection) and the heads
 * back to back; the caches are [num_blocks, block_size, num_kv_heads, head_dim],
 * contiguous, so a token's heads fill one contiguous slot. A negative slot is a
 * padding token and is skipped; a slot at or past num_slots makes the call return
 * -1 before anything is written. Pure copies: the result is bit-identical to the
 * torch path.
 */
#include <stdint.h>
#include <string.h>

int llmcore_reshape_and_cache_f32(const float *key, int64_t key_stride, const float *value,
                                  int64_t value_stride, float *key_cache, float *value_cache,
                                  const int64_t *slot_mapping, int64_t num_tokens,
                                  int64_t slot_size, int64_t num_slots) {
    for (int64_t t = 0; t < num_tokens; t++)
        if (slot_mapping[t] >= num_slots) return -1;
#pragma omp parallel for schedule(static) if (num_tokens >= 512)
    for (int64_t t = 0; t < num_tokens; t++) {
        const int64_t slot = slot_mapping[t];
        if (slot < 0) continue;
        memcpy(key_cache + slot * slot_size, key + t * key_stride, slot_size * sizeof(float));
        memcpy(value_cache + slot * slot_size, value + t * value_stride, slot_size * sizeof(float));
    }
    return 0;
}

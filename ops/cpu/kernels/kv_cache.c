/* Writing a step's keys and values into the paged KV cache (as ops/kv_cache.py).
 *
 * key and value are [tokens, num_kv_heads, head_dim] float32 with a token stride of
 * their own (they are usually column slices of the fused qkv projection) and the
 * heads back to back; the caches are [num_blocks, block_size, num_kv_heads,
 * head_dim], contiguous, so a token's heads fill one contiguous slot. The caches
 * hold float32 (a memcpy: bit-identical to the torch path) or float16 / bfloat16
 * (kv_dtype KV_F16 / KV_BF16 of vec.h: rounded to nearest even, the bits torch's
 * `.to(dtype)` gives). A negative slot is a padding token and is skipped; a slot at
 * or past num_slots, or an unknown kv_dtype, makes the call return -1 before
 * anything is written.
 */
#include <stdint.h>
#include <string.h>

#include "vec.h"

int llmcore_reshape_and_cache_f32(const float *key, int64_t key_stride, const float *value,
                                  int64_t value_stride, void *key_cache, void *value_cache,
                                  const int64_t *slot_mapping, int64_t num_tokens,
                                  int64_t slot_size, int64_t num_slots, int32_t kv_dtype) {
    if (kv_dtype != KV_F32 && kv_dtype != KV_F16 && kv_dtype != KV_BF16) return -1;
    for (int64_t t = 0; t < num_tokens; t++)
        if (slot_mapping[t] >= num_slots) return -1;
    const int64_t elem = kv_dtype == KV_F32 ? sizeof(float) : sizeof(uint16_t);
#pragma omp parallel for schedule(static) if (num_tokens >= 512)
    for (int64_t t = 0; t < num_tokens; t++) {
        const int64_t slot = slot_mapping[t];
        if (slot < 0) continue;
        write_kv((char *)key_cache + slot * slot_size * elem, key + t * key_stride, slot_size,
                 kv_dtype);
        write_kv((char *)value_cache + slot * slot_size * elem, value + t * value_stride,
                 slot_size, kv_dtype);
    }
    return 0;
}

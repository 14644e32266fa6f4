// reshape_and_cache: token t's key and value rows [Hkv, D] go to flat slot
// slot_mapping[t] of caches laid out [num_blocks, block_size, Hkv, D], i.e. to
// offset slot * Hkv * D. One thread block per token; threads stride over the
// Hkv * D contiguous elements (coalesced reads and writes). A negative slot
// marks a padding token and writes nothing.
#include "common.cuh"

template <typename scalar_t>
__global__ void reshape_and_cache(const scalar_t* __restrict__ key,
                                  const scalar_t* __restrict__ value,
                                  scalar_t* __restrict__ key_cache,
                                  scalar_t* __restrict__ value_cache,
                                  const long long* __restrict__ slot_mapping, int row_size,
                                  long long key_stride, long long value_stride) {
  const long long slot = slot_mapping[blockIdx.x];
  if (slot < 0) return;
  const scalar_t* k = key + blockIdx.x * key_stride;
  const scalar_t* v = value + blockIdx.x * value_stride;
  const long long dst = slot * row_size;
  for (int i = threadIdx.x; i < row_size; i += blockDim.x) {
    key_cache[dst + i] = k[i];
    value_cache[dst + i] = v[i];
  }
}

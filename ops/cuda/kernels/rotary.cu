// Rotary embedding in place on query [T, Hq, D] and key [T, Hkv, D] (rows may be
// strided: they are views of the fused qkv projection; heads are contiguous).
// One thread block per token; threads stride over (head, pair) for the query
// heads and then the key heads. A pair is (i, i + rot_dim/2) in the neox layout
// and (2i, 2i + 1) in the GPT-J layout; cos_sin_cache is float32
// [max_positions, rot_dim] (cos then sin).
//
// rotary_embedding_and_cache is rotary_embedding followed by reshape_and_cache
// (kv_cache.cu) in one launch: a thread that rotates a key pair writes it both
// back to `key` and to the token's cache slot; then the block copies the key
// features past rot_dim and the value row to the slot. No thread reads what
// another writes, so there is no barrier. A negative slot (padding) is rotated
// and not cached, as reshape_and_cache skips it.
#include "common.cuh"

// The angle of pair `pair` from one row of the table: the reference rounds cos and
// sin to scalar_t before the products.
template <typename scalar_t>
__device__ __forceinline__ void pair_cos_sin(const float* cos_sin, int pair, int half, float& c,
                                             float& s) {
  c = to_float(from_float<scalar_t>(cos_sin[pair]));
  s = to_float(from_float<scalar_t>(cos_sin[half + pair]));
}

// Rotates the features (i1, i2) of `head` in place by the angle (c, s).
template <typename scalar_t>
__device__ __forceinline__ void rotate_at(scalar_t* head, int i1, int i2, float c, float s) {
  const float x1 = to_float(head[i1]);
  const float x2 = to_float(head[i2]);
  head[i1] = from_float<scalar_t>(x1 * c - x2 * s);
  head[i2] = from_float<scalar_t>(x2 * c + x1 * s);
}

template <typename scalar_t>
__device__ __forceinline__ void rotate_pair(scalar_t* head, int pair, int rot_dim, int is_neox,
                                            float c, float s) {
  const int half = rot_dim / 2;
  rotate_at(head, is_neox ? pair : 2 * pair, is_neox ? pair + half : 2 * pair + 1, c, s);
}

template <typename scalar_t>
__global__ void rotary_embedding(const long long* __restrict__ positions,
                                 scalar_t* __restrict__ query, scalar_t* __restrict__ key,
                                 const float* __restrict__ cos_sin_cache, int rot_dim,
                                 long long query_stride, long long key_stride, int num_heads,
                                 int num_kv_heads, int head_dim, int is_neox) {
  const int token = blockIdx.x;
  const float* cos_sin = cos_sin_cache + positions[token] * rot_dim;
  const int half = rot_dim / 2;
  const int q_work = num_heads * half;
  const int total = q_work + num_kv_heads * half;
  for (int w = threadIdx.x; w < total; w += blockDim.x) {
    const bool is_query = w < q_work;
    const int idx = is_query ? w : w - q_work;
    const int head = idx / half;
    const int pair = idx % half;
    scalar_t* base = is_query ? query + token * query_stride : key + token * key_stride;
    float c, s;
    pair_cos_sin<scalar_t>(cos_sin, pair, half, c, s);
    rotate_pair(base + (long long)head * head_dim, pair, rot_dim, is_neox, c, s);
  }
}

template <typename scalar_t>
__global__ void rotary_embedding_and_cache(
    const long long* __restrict__ positions, scalar_t* __restrict__ query,
    scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
    scalar_t* __restrict__ key_cache, scalar_t* __restrict__ value_cache,
    const long long* __restrict__ slot_mapping, const float* __restrict__ cos_sin_cache,
    int rot_dim, long long query_stride, long long key_stride, long long value_stride,
    int num_heads, int num_kv_heads, int head_dim, int kv_head_dim, int is_neox) {
  const int token = blockIdx.x;
  const long long slot = slot_mapping[token];
  const int row_size = num_kv_heads * kv_head_dim;
  const long long dst = slot * row_size;
  const float* cos_sin = cos_sin_cache + positions[token] * rot_dim;
  scalar_t* q = query + token * query_stride;
  scalar_t* k = key + token * key_stride;
  const int half = rot_dim / 2;
  const int q_work = num_heads * half;
  const int total = q_work + num_kv_heads * half;
  for (int w = threadIdx.x; w < total; w += blockDim.x) {
    const bool is_query = w < q_work;
    const int idx = is_query ? w : w - q_work;
    const int head = idx / half;
    const int pair = idx % half;
    const int i1 = is_neox ? pair : 2 * pair;
    const int i2 = is_neox ? pair + half : 2 * pair + 1;
    float c, s;
    pair_cos_sin<scalar_t>(cos_sin, pair, half, c, s);
    if (is_query) {
      rotate_at(q + (long long)head * head_dim, i1, i2, c, s);
      continue;
    }
    const int offset = head * kv_head_dim;
    rotate_at(k + offset, i1, i2, c, s);
    if (slot >= 0) {  // this thread's own stores, read back
      key_cache[dst + offset + i1] = k[offset + i1];
      key_cache[dst + offset + i2] = k[offset + i2];
    }
  }
  if (slot < 0) return;
  const scalar_t* v = value + token * value_stride;
  for (int i = threadIdx.x; i < row_size; i += blockDim.x) {
    value_cache[dst + i] = v[i];
    if (i % kv_head_dim >= rot_dim) key_cache[dst + i] = k[i];  // not rotated: not read above
  }
}

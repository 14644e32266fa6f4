// Rotary embedding in place on query [T, Hq, D] and key [T, Hkv, D] (rows may be
// strided: they are views of the fused qkv projection; heads are contiguous).
// One thread block per token; threads stride over (head, pair) for the query
// heads and then the key heads. A pair is (i, i + rot_dim/2) in the neox layout
// and (2i, 2i + 1) in the GPT-J layout; cos_sin_cache is float32
// [max_positions, rot_dim] (cos then sin).
#include "common.cuh"

template <typename scalar_t>
__device__ __forceinline__ void rotate_pair(scalar_t* head, int pair, int rot_dim, int is_neox,
                                            float c, float s) {
  const int half = rot_dim / 2;
  const int i1 = is_neox ? pair : 2 * pair;
  const int i2 = is_neox ? pair + half : 2 * pair + 1;
  const float x1 = to_float(head[i1]);
  const float x2 = to_float(head[i2]);
  head[i1] = from_float<scalar_t>(x1 * c - x2 * s);
  head[i2] = from_float<scalar_t>(x2 * c + x1 * s);
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
    // The reference rounds cos and sin to scalar_t before the products.
    const float c = to_float(from_float<scalar_t>(cos_sin[pair]));
    const float s = to_float(from_float<scalar_t>(cos_sin[half + pair]));
    rotate_pair(base + (long long)head * head_dim, pair, rot_dim, is_neox, c, s);
  }
}

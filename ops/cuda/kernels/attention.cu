// Attention over the paged KV cache (layout [num_blocks, block_size, Hkv, D]).
//
// One thread block of ATTN_THREADS (4 warps) serves one query head of one query
// token over a range of context tokens. Warps take the tokens round-robin, two at
// a time (ATTN_UNROLL); for a token a warp loads the key row (lane l holds dims
// l, l+32, ...: coalesced), forms the dot product with a warp-shuffle reduction
// and folds the token into its own online softmax (running max m, sum l, accumulator acc over the value rows). The
// four warps then merge through shared memory. Nothing is ever read past a
// sequence's length, so unwritten cache slots (even NaN) never enter a result.
//
// Decode (one query token per sequence) may split the context into partitions of
// `partition_size` tokens (flash-decoding): each (head, sequence, partition) block
// writes (max, sum, unnormalised accumulator) in float32 and
// paged_attention_reduce merges them. With one partition the block writes the
// output directly.
#include "common.cuh"

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / LLMCORE_WARP)
#define ATTN_UNROLL 2  // tokens per warp step

template <int HEAD_SIZE>
struct AttnShared {
  float m[ATTN_WARPS];
  float l[ATTN_WARPS];
  float acc[ATTN_WARPS][HEAD_SIZE];
};

// Each warp's online softmax over tokens [begin, end) of one sequence, left in
// `sh` (this warp's m, l and acc rows).
template <typename scalar_t, int HEAD_SIZE>
__device__ __forceinline__ void warp_attend(
    AttnShared<HEAD_SIZE>& sh, const scalar_t* __restrict__ q, float scale,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_table, int block_size, int kv_head, int num_kv_heads,
    int begin, int end) {
  constexpr int ELEMS = (HEAD_SIZE + LLMCORE_WARP - 1) / LLMCORE_WARP;
  const int lane = threadIdx.x % LLMCORE_WARP;
  const int warp = threadIdx.x / LLMCORE_WARP;
  float qv[ELEMS];
  float acc[ELEMS];
#pragma unroll
  for (int e = 0; e < ELEMS; ++e) {
    const int d = lane + e * LLMCORE_WARP;
    qv[e] = d < HEAD_SIZE ? to_float(q[d]) * scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = LLMCORE_NEG_INF;
  float l = 0.0f;
  const long long row = (long long)num_kv_heads * HEAD_SIZE;
  const long long head_off = (long long)kv_head * HEAD_SIZE;
  // A warp takes ATTN_UNROLL consecutive tokens per step and issues all their key
  // loads before the first reduction, so more bytes are in flight. A token past
  // `end` reloads token end - 1 (always written) and is masked to a zero weight.
  for (int t0 = begin + warp * ATTN_UNROLL; t0 < end; t0 += ATTN_WARPS * ATTN_UNROLL) {
    long long off[ATTN_UNROLL];
    float s[ATTN_UNROLL];
#pragma unroll
    for (int u = 0; u < ATTN_UNROLL; ++u) {
      const int t = min(t0 + u, end - 1);
      const long long block = block_table[t / block_size];
      off[u] = (block * block_size + t % block_size) * row + head_off;
      const scalar_t* k = key_cache + off[u];
      s[u] = 0.0f;
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) {
        const int d = lane + e * LLMCORE_WARP;
        if (d < HEAD_SIZE) s[u] += qv[e] * to_float(k[d]);
      }
    }
    float m_new = m;
#pragma unroll
    for (int u = 0; u < ATTN_UNROLL; ++u) {
      s[u] = t0 + u < end ? warp_sum(s[u]) : LLMCORE_NEG_INF;
      m_new = fmaxf(m_new, s[u]);
    }
    const float alpha = expf(m - m_new);  // 0 for the first tokens (m = -inf)
    l *= alpha;
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) acc[e] *= alpha;
#pragma unroll
    for (int u = 0; u < ATTN_UNROLL; ++u) {
      const float p = expf(s[u] - m_new);  // 0 for a masked token
      l += p;
      const scalar_t* v = value_cache + off[u];
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) {
        const int d = lane + e * LLMCORE_WARP;
        if (d < HEAD_SIZE) acc[e] += p * to_float(v[d]);
      }
    }
    m = m_new;
  }
  if (lane == 0) {
    sh.m[warp] = m;
    sh.l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < ELEMS; ++e) {
    const int d = lane + e * LLMCORE_WARP;
    if (d < HEAD_SIZE) sh.acc[warp][d] = acc[e];
  }
}

// After warp_attend and a barrier: the block's max, and each warp's weight
// exp(m_w - max) (0 for a warp that saw no token) in `weights`; returns the sum.
template <int HEAD_SIZE>
__device__ __forceinline__ float merge_warps(const AttnShared<HEAD_SIZE>& sh, float* weights,
                                             float* block_max) {
  float mx = LLMCORE_NEG_INF;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; ++w) mx = fmaxf(mx, sh.m[w]);
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; ++w) {
    weights[w] = sh.m[w] == LLMCORE_NEG_INF ? 0.0f : expf(sh.m[w] - mx);
    total += weights[w] * sh.l[w];
  }
  *block_max = mx;
  return total;
}

template <int HEAD_SIZE>
__device__ __forceinline__ float merged_acc(const AttnShared<HEAD_SIZE>& sh, const float* weights,
                                            int d) {
  float a = 0.0f;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; ++w) a += weights[w] * sh.acc[w][d];
  return a;
}

// grid (num_heads, num_seqs, num_partitions). With one partition `out` [B, Hq, D]
// is written; otherwise max_logits/exp_sums [B, Hq, P] and tmp_out [B, Hq, P, D].
template <typename scalar_t, int HEAD_SIZE>
__global__ void __launch_bounds__(ATTN_THREADS) paged_attention_decode(
    scalar_t* __restrict__ out, float* __restrict__ max_logits, float* __restrict__ exp_sums,
    float* __restrict__ tmp_out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_tables, const int* __restrict__ seq_lens, float scale,
    int num_kv_heads, int block_size, int max_blocks_per_seq, long long query_stride,
    int partition_size) {
  __shared__ AttnShared<HEAD_SIZE> sh;
  const int head = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int num_heads = gridDim.x, num_parts = gridDim.z;
  const int seq_len = seq_lens[seq];
  const int begin = part * partition_size;
  const int end = min(begin + partition_size, seq_len);
  const int kv_head = head / (num_heads / num_kv_heads);
  const scalar_t* q = query + seq * query_stride + (long long)head * HEAD_SIZE;
  warp_attend<scalar_t, HEAD_SIZE>(sh, q, scale, key_cache, value_cache,
                                   block_tables + (long long)seq * max_blocks_per_seq,
                                   block_size, kv_head, num_kv_heads, begin, end);
  __syncthreads();
  float weights[ATTN_WARPS];
  float mx;
  const float total = merge_warps<HEAD_SIZE>(sh, weights, &mx);
  const long long row = (long long)seq * num_heads + head;
  if (num_parts == 1) {
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int d = threadIdx.x; d < HEAD_SIZE; d += ATTN_THREADS)
      out[row * HEAD_SIZE + d] = from_float<scalar_t>(merged_acc<HEAD_SIZE>(sh, weights, d) * inv);
    return;
  }
  const long long idx = row * num_parts + part;
  if (threadIdx.x == 0) {
    max_logits[idx] = mx;
    exp_sums[idx] = total;
  }
  for (int d = threadIdx.x; d < HEAD_SIZE; d += ATTN_THREADS)
    tmp_out[idx * HEAD_SIZE + d] = merged_acc<HEAD_SIZE>(sh, weights, d);
}

// grid (num_heads, num_seqs): merges the partitions of paged_attention_decode.
// Every thread recomputes the (few) partition weights itself; the loads are
// broadcasts from L1.
template <typename scalar_t>
__global__ void __launch_bounds__(ATTN_THREADS) paged_attention_reduce(
    scalar_t* __restrict__ out, const float* __restrict__ max_logits,
    const float* __restrict__ exp_sums, const float* __restrict__ tmp_out, int num_partitions,
    int head_size) {
  const long long row = (long long)blockIdx.y * gridDim.x + blockIdx.x;
  const long long first = row * num_partitions;
  float mx = LLMCORE_NEG_INF;
  for (int p = 0; p < num_partitions; ++p) mx = fmaxf(mx, max_logits[first + p]);
  float total = 0.0f;
  for (int p = 0; p < num_partitions; ++p) {
    const float m = max_logits[first + p];
    if (m != LLMCORE_NEG_INF) total += expf(m - mx) * exp_sums[first + p];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int d = threadIdx.x; d < head_size; d += blockDim.x) {
    float a = 0.0f;
    for (int p = 0; p < num_partitions; ++p) {
      const float m = max_logits[first + p];
      if (m != LLMCORE_NEG_INF) a += expf(m - mx) * tmp_out[(first + p) * head_size + d];
    }
    out[row * head_size + d] = from_float<scalar_t>(a * inv);
  }
}

// grid (num_tokens, num_heads): query token `t` of sequence s (found by binary
// search in query_start_loc) sits at position seq_len - q_len + (t - q_start)
// and attends causally to tokens [0, position]. Output [T, Hq, D] contiguous.
template <typename scalar_t, int HEAD_SIZE>
__global__ void __launch_bounds__(ATTN_THREADS) paged_attention_prefill(
    scalar_t* __restrict__ out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_tables, const int* __restrict__ query_start_loc,
    const int* __restrict__ seq_lens, float scale, int num_seqs, int num_kv_heads,
    int block_size, int max_blocks_per_seq, long long query_stride) {
  __shared__ AttnShared<HEAD_SIZE> sh;
  const int token = blockIdx.x, head = blockIdx.y, num_heads = gridDim.y;
  int lo = 0, hi = num_seqs - 1;  // the last s with query_start_loc[s] <= token
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (query_start_loc[mid] <= token) lo = mid; else hi = mid - 1;
  }
  const int seq = lo;
  const int q_start = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_start;
  const int end = seq_lens[seq] - q_len + (token - q_start) + 1;
  const int kv_head = head / (num_heads / num_kv_heads);
  const scalar_t* q = query + token * query_stride + (long long)head * HEAD_SIZE;
  warp_attend<scalar_t, HEAD_SIZE>(sh, q, scale, key_cache, value_cache,
                                   block_tables + (long long)seq * max_blocks_per_seq,
                                   block_size, kv_head, num_kv_heads, 0, end);
  __syncthreads();
  float weights[ATTN_WARPS];
  float mx;
  const float total = merge_warps<HEAD_SIZE>(sh, weights, &mx);
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  const long long row = (long long)token * num_heads + head;
  for (int d = threadIdx.x; d < HEAD_SIZE; d += ATTN_THREADS)
    out[row * HEAD_SIZE + d] = from_float<scalar_t>(merged_acc<HEAD_SIZE>(sh, weights, d) * inv);
}

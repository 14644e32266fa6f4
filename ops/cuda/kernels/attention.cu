// Attention over the paged KV cache (layout [num_blocks, block_size, Hkv, D]).
//
// Prefill: a thread block of ATTN_THREADS (4 warps) serves one query head of one
// query token. Warps take the context tokens round-robin, two at a time
// (ATTN_UNROLL); for a token a warp loads the key row (lane l holds dims l, l+32,
// ...: coalesced), forms the dot product with a warp-shuffle reduction and folds
// the token into its own online softmax (running max m, sum l, accumulator acc
// over the value rows). The four warps then merge through shared memory.
//
// Decode works the same way but a block serves up to GQA_TILE query heads of one
// kv head, loading each K/V row once for all of them, and may split the context
// into partitions of `partition_size` tokens (flash-decoding): each block then
// writes (max, sum, unnormalised accumulator) per head in float32 and
// paged_attention_reduce merges them. With one partition the block writes the
// output directly.
//
// Nothing is ever read past a sequence's length, so unwritten cache slots (even
// NaN) never enter a result. With sliding_window W > 0 a query at position p reads
// keys p - W + 1 .. p only (blocks before its window are never touched: the KV
// manager may have freed them); with soft_cap c > 0 each score (after `scale`)
// becomes c * tanhf(score / c) before the softmax. 0 means neither.
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
    int begin, int end, float soft_cap) {
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
      s[u] = t0 + u < end ? soft_capped(warp_sum(s[u]), soft_cap) : LLMCORE_NEG_INF;
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

// Decode reads every K/V row once per GQA group and keeps many rows in flight.
// A block serves up to GQA_TILE query heads of one kv head (a larger group is
// split over several blocks). Its threads form "slots" of DEC_GROUP threads; a
// slot owns one K/V row at a time, each thread loading 16 contiguous bytes of it
// (DEC_VEC elements: a row of 64 bf16 is one 128-byte line read by 8 threads),
// and takes DEC_UNROLL rows per step, issuing all their K and V loads before the
// first use. A score is reduced within the slot (log2(DEC_GROUP) shuffles); each
// slot keeps one online softmax per head over its rows (one rescale per step),
// slots merge through shuffles, then the warps through shared memory.
//
// The context is split into `gridDim.z` partitions per sequence (flash-decoding):
// a sequence's span (its window, or its whole length) is cut into equal chunks of
// at least `min_partition` tokens, so every partition of a long sequence works and
// the partitions past a short one's end exit at once. With several partitions each
// block writes (max, sum, unnormalised accumulator) per head in float32 and
// paged_attention_reduce merges them; with one it writes the output.
#define GQA_TILE 4

template <typename scalar_t, int HEAD_SIZE>
struct DecodeShape {
  static constexpr int VEC = 16 / sizeof(scalar_t);                // elements per 16-byte load
  static constexpr int ROW_VECS = HEAD_SIZE / VEC;                 // loads per row
  static constexpr int GROUP = ROW_VECS <= 8 ? 8 : ROW_VECS <= 16 ? 16 : 32;  // threads per slot
  static constexpr int NV = (ROW_VECS + GROUP - 1) / GROUP;        // loads per thread per row
  static constexpr int ELEMS = NV * VEC;                           // row elements per thread
  static constexpr int SLOTS = ATTN_THREADS / GROUP;               // rows in flight per step / UNROLL
  static constexpr int UNROLL = 2;                                 // rows per slot per step
};

template <int HEAD_SIZE>
struct DecodeShared {
  float m[ATTN_WARPS][GQA_TILE];
  float l[ATTN_WARPS][GQA_TILE];
  float acc[ATTN_WARPS][GQA_TILE][HEAD_SIZE];
};

// Sum over the `group` lanes of a slot (aligned, a power of two); all get it.
template <int GROUP>
__device__ __forceinline__ float slot_sum(float v) {
#pragma unroll
  for (int offset = GROUP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, int N>
__device__ __forceinline__ void unpack(const uint4& raw, float* out) {
  const scalar_t* e = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(e[i]);
}

// grid (num_kv_heads * ceil(group / GQA_TILE), num_seqs, num_partitions). With
// one partition `out` [B, Hq, D] is written; otherwise max_logits/exp_sums
// [B, Hq, P] and tmp_out [B, Hq, P, D]. K/V rows must be 16-byte aligned (the
// planner checks the caches' pointers; HEAD_SIZE is a multiple of 16).
template <typename scalar_t, int HEAD_SIZE>
__global__ void __launch_bounds__(ATTN_THREADS, 4) paged_attention_decode(
    scalar_t* __restrict__ out, float* __restrict__ max_logits, float* __restrict__ exp_sums,
    float* __restrict__ tmp_out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_tables, const int* __restrict__ seq_lens, float scale,
    int sliding_window, float soft_cap, int num_heads, int num_kv_heads, int block_size,
    int max_blocks_per_seq, long long query_stride, int min_partition) {
  using S = DecodeShape<scalar_t, HEAD_SIZE>;
  constexpr int VEC = S::VEC, GROUP = S::GROUP, NV = S::NV, ELEMS = S::ELEMS;
  constexpr int SLOTS = S::SLOTS, UNROLL = S::UNROLL, STEP = SLOTS * UNROLL;
  __shared__ DecodeShared<HEAD_SIZE> sh;
  const int seq = blockIdx.y, part = blockIdx.z, num_parts = gridDim.z;
  const int group = num_heads / num_kv_heads;
  const int tiles = (group + GQA_TILE - 1) / GQA_TILE;
  const int kv_head = blockIdx.x / tiles;
  const int first = kv_head * group + (blockIdx.x % tiles) * GQA_TILE;  // first query head
  const int n = min(GQA_TILE, kv_head * group + group - first);  // query heads served
  const int lane = threadIdx.x % LLMCORE_WARP, warp = threadIdx.x / LLMCORE_WARP;
  const int slot = threadIdx.x / GROUP, j = threadIdx.x % GROUP;

  const int seq_len = seq_lens[seq];
  const int window_start = sliding_window > 0 ? max(seq_len - sliding_window, 0) : 0;
  const int span = seq_len - window_start;
  const int chunk = max((span + num_parts - 1) / num_parts, min_partition);
  const int begin = window_start + part * chunk;  // may be past the end: no work
  const int end = min(begin + chunk, seq_len);

  // This thread's elements of a row: load v covers [(v * GROUP + j) * VEC, + VEC).
  bool live[NV];
#pragma unroll
  for (int v = 0; v < NV; ++v) live[v] = (v * GROUP + j) * VEC < HEAD_SIZE;
  float q[GQA_TILE][ELEMS];
#pragma unroll
  for (int g = 0; g < GQA_TILE; ++g) {
    const scalar_t* qh = query + seq * query_stride + (long long)(first + min(g, n - 1)) * HEAD_SIZE;
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      uint4 raw = {0u, 0u, 0u, 0u};
      if (live[v]) raw = *reinterpret_cast<const uint4*>(qh + (v * GROUP + j) * VEC);
      unpack<scalar_t, VEC>(raw, &q[g][v * VEC]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) q[g][v * VEC + e] *= scale;
    }
  }
  const int* block_table = block_tables + (long long)seq * max_blocks_per_seq;
  const long long row = (long long)num_kv_heads * HEAD_SIZE;
  const long long head_off = (long long)kv_head * HEAD_SIZE;
  const int shift = (block_size & (block_size - 1)) == 0 ? __ffs(block_size) - 1 : -1;
  float m[GQA_TILE], l[GQA_TILE], acc[GQA_TILE][ELEMS];
#pragma unroll
  for (int g = 0; g < GQA_TILE; ++g) {
    m[g] = LLMCORE_NEG_INF;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) acc[g][e] = 0.0f;
  }
  // The loop is uniform over the block (shuffles need whole warps); a row past
  // `end` reloads row end - 1 (always written) and weighs 0.
  for (int base = begin; base < end; base += STEP) {
    uint4 kraw[UNROLL][NV], vraw[UNROLL][NV];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int t = min(base + u * SLOTS + slot, end - 1);
      // A power-of-two block size (every one llmcore makes) divides by a shift: a
      // division by a runtime value costs ~20 instructions, per row and thread.
      const int blk = shift >= 0 ? t >> shift : t / block_size;
      const long long off = ((long long)block_table[blk] * block_size + (t - blk * block_size)) * row + head_off;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        kraw[u][v] = vraw[u][v] = uint4{0u, 0u, 0u, 0u};
        if (live[v]) {
          kraw[u][v] = *reinterpret_cast<const uint4*>(key_cache + off + (v * GROUP + j) * VEC);
          vraw[u][v] = *reinterpret_cast<const uint4*>(value_cache + off + (v * GROUP + j) * VEC);
        }
      }
    }
    float s[UNROLL][GQA_TILE];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float k[ELEMS];
#pragma unroll
      for (int v = 0; v < NV; ++v) unpack<scalar_t, VEC>(kraw[u][v], &k[v * VEC]);
      const bool valid = base + u * SLOTS + slot < end;
#pragma unroll
      for (int g = 0; g < GQA_TILE; ++g) {
        s[u][g] = LLMCORE_NEG_INF;
        if (g >= n) continue;  // n is uniform over the block
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < ELEMS; ++e) dot += q[g][e] * k[e];
        dot = slot_sum<GROUP>(dot);
        if (valid) s[u][g] = soft_capped(dot, soft_cap);
      }
    }
#pragma unroll
    for (int g = 0; g < GQA_TILE; ++g) {
      float m_new = m[g];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) m_new = fmaxf(m_new, s[u][g]);
      if (m_new == LLMCORE_NEG_INF) continue;  // no row of this slot yet
      const float alpha = expf(m[g] - m_new);  // 0 while m = -inf
      l[g] *= alpha;
#pragma unroll
      for (int e = 0; e < ELEMS; ++e) acc[g][e] *= alpha;
      m[g] = m_new;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) s[u][g] = expf(s[u][g] - m_new);  // 0 for a masked row
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float val[ELEMS];
#pragma unroll
      for (int v = 0; v < NV; ++v) unpack<scalar_t, VEC>(vraw[u][v], &val[v * VEC]);
#pragma unroll
      for (int g = 0; g < GQA_TILE; ++g) {
        if (m[g] == LLMCORE_NEG_INF) continue;
        const float p = s[u][g];
        l[g] += p;
#pragma unroll
        for (int e = 0; e < ELEMS; ++e) acc[g][e] += p * val[e];
      }
    }
  }
  // Merge the slots of each warp (lanes j, j + GROUP, ...), then the warps.
#pragma unroll
  for (int g = 0; g < GQA_TILE; ++g) {
    float mx = m[g];
#pragma unroll
    for (int offset = GROUP; offset < LLMCORE_WARP; offset *= 2)
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
    const float w = m[g] == LLMCORE_NEG_INF ? 0.0f : expf(m[g] - mx);
    float total = l[g] * w;
#pragma unroll
    for (int offset = GROUP; offset < LLMCORE_WARP; offset *= 2)
      total += __shfl_xor_sync(0xffffffffu, total, offset);
#pragma unroll
    for (int e = 0; e < ELEMS; ++e) {
      float a = acc[g][e] * w;
#pragma unroll
      for (int offset = GROUP; offset < LLMCORE_WARP; offset *= 2)
        a += __shfl_xor_sync(0xffffffffu, a, offset);
      acc[g][e] = a;
    }
    if (lane < GROUP) {
      if (lane == 0) {
        sh.m[warp][g] = mx;
        sh.l[warp][g] = total;
      }
#pragma unroll
      for (int v = 0; v < NV; ++v)
        if (live[v])
#pragma unroll
          for (int e = 0; e < VEC; ++e) sh.acc[warp][g][(v * GROUP + j) * VEC + e] = acc[g][v * VEC + e];
    }
  }
  __syncthreads();

  for (int i = threadIdx.x; i < n * HEAD_SIZE; i += ATTN_THREADS) {
    const int g = i / HEAD_SIZE, d = i % HEAD_SIZE;
    float mx = LLMCORE_NEG_INF;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) mx = fmaxf(mx, sh.m[w][g]);
    float total = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) {
      const float weight = sh.m[w][g] == LLMCORE_NEG_INF ? 0.0f : expf(sh.m[w][g] - mx);
      total += weight * sh.l[w][g];
      a += weight * sh.acc[w][g][d];
    }
    const long long head_row = (long long)seq * num_heads + first + g;
    if (num_parts == 1) {
      out[head_row * HEAD_SIZE + d] = from_float<scalar_t>(total > 0.0f ? a / total : 0.0f);
      continue;
    }
    const long long idx = head_row * num_parts + part;
    if (d == 0) {
      max_logits[idx] = mx;
      exp_sums[idx] = total;
    }
    tmp_out[idx * HEAD_SIZE + d] = a;
  }
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
// and attends causally to tokens [0, position] (its last sliding_window of them,
// where one is given). Output [T, Hq, D] contiguous.
template <typename scalar_t, int HEAD_SIZE>
__global__ void __launch_bounds__(ATTN_THREADS) paged_attention_prefill(
    scalar_t* __restrict__ out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_tables, const int* __restrict__ query_start_loc,
    const int* __restrict__ seq_lens, float scale, int sliding_window, float soft_cap,
    int num_seqs, int num_kv_heads, int block_size, int max_blocks_per_seq,
    long long query_stride) {
  __shared__ AttnShared<HEAD_SIZE> sh;
  const int token = blockIdx.x, head = blockIdx.y, num_heads = gridDim.y;
  const int seq = find_sequence(query_start_loc, num_seqs, token, 1, 0);
  const int q_start = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_start;
  const int end = seq_lens[seq] - q_len + (token - q_start) + 1;
  const int begin = sliding_window > 0 ? max(end - sliding_window, 0) : 0;
  const int kv_head = head / (num_heads / num_kv_heads);
  const scalar_t* q = query + token * query_stride + (long long)head * HEAD_SIZE;
  warp_attend<scalar_t, HEAD_SIZE>(sh, q, scale, key_cache, value_cache,
                                   block_tables + (long long)seq * max_blocks_per_seq,
                                   block_size, kv_head, num_kv_heads, begin, end, soft_cap);
  __syncthreads();
  float weights[ATTN_WARPS];
  float mx;
  const float total = merge_warps<HEAD_SIZE>(sh, weights, &mx);
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  const long long row = (long long)token * num_heads + head;
  for (int d = threadIdx.x; d < HEAD_SIZE; d += ATTN_THREADS)
    out[row * HEAD_SIZE + d] = from_float<scalar_t>(merged_acc<HEAD_SIZE>(sh, weights, d) * inv);
}

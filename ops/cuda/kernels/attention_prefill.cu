// Prefill attention over the paged KV cache on tensor cores (WMMA, sm_80+,
// __half and __nv_bfloat16; float32 queries and older GPUs take the scalar
// paged_attention_prefill of attention.cu). Cache layout [num_blocks, block_size,
// Hkv, D], block_tables [num_seqs, max_blocks] int32; output [T, Hq, D].
//
// A block of PF_WARPS warps serves one query head and a tile of PF_TILE_Q
// consecutive query tokens of ONE sequence; warp w owns rows 16w .. 16w + 15.
// The tile's Q rows are staged in shared memory once. The block then walks the
// keys the tile can see, [window start of its first row, position of its last
// row], PF_TILE_K at a time (every other key tile is skipped): all threads
// gather the key tile's K and V rows from their cache blocks into shared memory
// with 16-byte loads (a key out of that range is written as zeros, so no freed
// block or unwritten slot is touched and no NaN reaches a product), then each warp
//   S  = Q K^T      16 x PF_TILE_K, wmma 16x16x16, float accumulators -> smem,
//   softmax         two lanes per row, alternate scores each, in float32: scale, soft
//                   cap c * tanh(s / c), causal and window masks, the running max
//                   m and sum l (kept in registers, equal in both lanes), the
//                   weights P rounded to scalar_t into smem, and the row's running
//                   output O (float, smem) scaled by exp(m_old - m_new),
//   O += P V        wmma with the accumulator loaded from and stored back to O.
// O lives in shared memory rather than in accumulator fragments: the fragments'
// element-to-row mapping is unspecified, so the per-row rescale needs the rows in
// memory anyway, and 16 x 128 floats of fragments per warp would not fit the
// build check's 64 registers. At the end each row is divided by its l and written.
// Shared memory per block: the Q, K, V and P tiles (scalar_t), S and O (float),
// the last three rows padded against bank conflicts: 47.5 KB at D = 128, under
// the 48 KB of static shared memory.
//
// Grid (num_seqs + num_tokens / PF_TILE_Q, num_heads): sequence s owns tiles
// s + qsl[s] / PF_TILE_Q .. s + qsl[s + 1] / PF_TILE_Q - 1 (qsl =
// query_start_loc), at least ceil(q_len / PF_TILE_Q) of them; a block finds its
// sequence by binary search and returns at once if it has no rows left, so the
// host needs no device value to size the grid. Query token i of a sequence sits at
// position seq_len - q_len + i and attends to keys [0, position] (its last
// sliding_window of them when that is > 0).
#include "common.cuh"
#include <mma.h>

#define PF_WARPS 2
#define PF_THREADS (PF_WARPS * LLMCORE_WARP)
#define PF_TILE_Q (PF_WARPS * 16)
#define PF_TILE_K 32
#define PF_VEC 8  // scalar_t per 16-byte load
// Row pitches of S, P and O: padded so that the 16 rows a warp's lanes walk in
// the softmax start on different banks (WMMA wants multiples of 16 bytes).
#define PF_LD_S (PF_TILE_K + 4)
#define PF_LD_P (PF_TILE_K + 8)
#define PF_LD_O(D) ((D) + 4)

template <typename scalar_t, int HEAD_SIZE>
struct PrefillShared {
  alignas(32) scalar_t q[PF_TILE_Q][HEAD_SIZE];  // wmma wants 256-bit aligned tiles
  scalar_t k[PF_TILE_K][HEAD_SIZE];
  scalar_t v[PF_TILE_K][HEAD_SIZE];
  float s[PF_TILE_Q][PF_LD_S];
  scalar_t p[PF_TILE_Q][PF_LD_P];
  float o[PF_TILE_Q][PF_LD_O(HEAD_SIZE)];
};

template <typename scalar_t, int HEAD_SIZE>
__global__ void __launch_bounds__(PF_THREADS, 16) paged_attention_prefill_tc(
    scalar_t* __restrict__ out, const scalar_t* __restrict__ query,
    const scalar_t* __restrict__ key_cache, const scalar_t* __restrict__ value_cache,
    const int* __restrict__ block_tables, const int* __restrict__ query_start_loc,
    const int* __restrict__ seq_lens, float scale, int sliding_window, float soft_cap,
    int num_seqs, int num_kv_heads, int block_size, int max_blocks_per_seq,
    long long query_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // No bf16 WMMA before sm_80: the host launches the scalar kernel there.
#else
  using namespace nvcuda;
  constexpr int VECS = HEAD_SIZE / PF_VEC;  // 16-byte vectors per row
  __shared__ PrefillShared<scalar_t, HEAD_SIZE> sh;
  const int tile = blockIdx.x, head = blockIdx.y, num_heads = gridDim.y;
  const int seq = find_sequence(query_start_loc, num_seqs, tile, PF_TILE_Q, 1);
  const int q_start = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_start;
  const int first = (tile - seq - q_start / PF_TILE_Q) * PF_TILE_Q;  // row 0's index in the seq
  if (first >= q_len) return;  // a spare tile: uniform over the block
  const int rows = min(PF_TILE_Q, q_len - first);
  const int ctx = seq_lens[seq] - q_len;  // position of the sequence's first query token
  const int kv_head = head / (num_heads / num_kv_heads);
  const int key_begin = sliding_window > 0 ? max(ctx + first - sliding_window + 1, 0) : 0;
  const int key_end = ctx + first + rows;  // one past the last row's position
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  for (int i = threadIdx.x; i < PF_TILE_Q * VECS; i += PF_THREADS) {
    const int r = i / VECS, c = (i % VECS) * PF_VEC;
    const long long off = (long long)(q_start + first + r) * query_stride + (long long)head * HEAD_SIZE + c;
    *reinterpret_cast<uint4*>(&sh.q[r][c]) =
        r < rows ? *reinterpret_cast<const uint4*>(query + off) : zero;
  }
  for (int i = threadIdx.x; i < PF_TILE_Q * PF_LD_O(HEAD_SIZE); i += PF_THREADS) (&sh.o[0][0])[i] = 0.0f;

  const int warp = threadIdx.x / LLMCORE_WARP, lane = threadIdx.x % LLMCORE_WARP;
  const int row = warp * 16 + lane / 2;  // the row whose softmax this lane shares
  const int half = lane % 2;             // ... and its columns half, half + 2, ...
  const int pos = ctx + first + row;
  const bool row_valid = row < rows;
  const int row_begin = sliding_window > 0 ? pos - sliding_window + 1 : 0;
  float m = LLMCORE_NEG_INF, l = 0.0f;
  const int* table = block_tables + (long long)seq * max_blocks_per_seq;
  const long long kv_row = (long long)num_kv_heads * HEAD_SIZE;
  const int shift = (block_size & (block_size - 1)) == 0 ? __ffs(block_size) - 1 : -1;

  for (int k0 = key_begin; k0 < key_end; k0 += PF_TILE_K) {
    __syncthreads();  // the previous tile's K/V are read (and, first time, Q/O written)
    for (int i = threadIdx.x; i < PF_TILE_K * VECS; i += PF_THREADS) {
      const int r = i / VECS, c = (i % VECS) * PF_VEC, t = k0 + r;
      uint4 kv = zero, vv = zero;
      if (t < key_end) {
        const int blk = shift >= 0 ? t >> shift : t / block_size;  // no division if we can
        const long long slot = (long long)table[blk] * block_size + (t - blk * block_size);
        const long long off = slot * kv_row + (long long)kv_head * HEAD_SIZE + c;
        kv = *reinterpret_cast<const uint4*>(key_cache + off);
        vv = *reinterpret_cast<const uint4*>(value_cache + off);
      }
      *reinterpret_cast<uint4*>(&sh.k[r][c]) = kv;
      *reinterpret_cast<uint4*>(&sh.v[r][c]) = vv;
    }
    __syncthreads();

    {  // S = Q K^T for this warp's 16 rows
      wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::col_major> b;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[PF_TILE_K / 16];
#pragma unroll
      for (int n = 0; n < PF_TILE_K / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
      for (int kk = 0; kk < HEAD_SIZE / 16; ++kk) {
        wmma::load_matrix_sync(a, &sh.q[warp * 16][kk * 16], HEAD_SIZE);
#pragma unroll
        for (int n = 0; n < PF_TILE_K / 16; ++n) {
          wmma::load_matrix_sync(b, &sh.k[n * 16][kk * 16], HEAD_SIZE);
          wmma::mma_sync(acc[n], a, b, acc[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < PF_TILE_K / 16; ++n)
        wmma::store_matrix_sync(&sh.s[warp * 16][n * 16], acc[n], PF_LD_S, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row `row`, this lane's keys k0 + half + 2j.
    float* srow = &sh.s[row][half];
    float tile_max = LLMCORE_NEG_INF;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int t = k0 + half + 2 * j;
      const bool seen = row_valid && t <= pos && t >= row_begin;
      const float s = seen ? soft_capped(srow[2 * j] * scale, soft_cap) : LLMCORE_NEG_INF;
      srow[2 * j] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    const bool none = m_new == LLMCORE_NEG_INF;  // no key seen yet (or a padding row)
    const float alpha = none ? 1.0f : expf(m - m_new);
    float sum = 0.0f;
    scalar_t* prow = &sh.p[row][half];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const float p = none ? 0.0f : expf(srow[2 * j] - m_new);
      prow[2 * j] = from_float<scalar_t>(p);
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    float* orow = &sh.o[row][0];
#pragma unroll 4
    for (int d = half; d < HEAD_SIZE; d += 2) orow[d] *= alpha;
    __syncwarp();

    {  // O += P V
      // P's fragments are reloaded per column slice (shared memory is cheap; the
      // registers of both would push the kernel past the 64-register cap).
      wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::row_major> b;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
#pragma unroll
      for (int c = 0; c < HEAD_SIZE / 16; ++c) {
        wmma::load_matrix_sync(acc, &sh.o[warp * 16][c * 16], PF_LD_O(HEAD_SIZE), wmma::mem_row_major);
#pragma unroll
        for (int kk = 0; kk < PF_TILE_K / 16; ++kk) {
          wmma::load_matrix_sync(a, &sh.p[warp * 16][kk * 16], PF_LD_P);
          wmma::load_matrix_sync(b, &sh.v[kk * 16][c * 16], HEAD_SIZE);
          wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(&sh.o[warp * 16][c * 16], acc, PF_LD_O(HEAD_SIZE), wmma::mem_row_major);
      }
    }
    __syncwarp();  // the next rescale (or the output) reads rows other lanes stored
  }

  if (row_valid) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float* orow = &sh.o[row][0];
    scalar_t* o = out + ((long long)(q_start + first + row) * num_heads + head) * HEAD_SIZE;
#pragma unroll 4
    for (int d = half; d < HEAD_SIZE; d += 2) o[d] = from_float<scalar_t>(orow[d] * inv);
  }
#endif
}

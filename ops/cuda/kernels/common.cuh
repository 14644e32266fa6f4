// Shared device helpers of llmcore's kernels: dtype conversions and reductions.
// Every kernel accumulates in float32 whatever its storage type scalar_t
// (float, __half or __nv_bfloat16). Integer sizes are `int`, strides and flat
// offsets `long long`, so no index overflows on large caches.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define LLMCORE_WARP 32
#define LLMCORE_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename scalar_t> __device__ __forceinline__ scalar_t from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A score after the soft cap (c > 0), or as it is (c == 0).
__device__ __forceinline__ float soft_capped(float s, float soft_cap) {
  return soft_cap > 0.0f ? soft_cap * tanhf(s / soft_cap) : s;
}

// The sequence serving `x` in a varlen batch: the last s < num_seqs with
// s * spare + query_start_loc[s] / tile <= x. With (tile 1, spare 0), the
// sequence of query token x; with (tile T, spare 1), that of T-token query tile
// x when sequence s owns tiles s + qsl[s] / T .. s + qsl[s + 1] / T - 1.
__device__ __forceinline__ int find_sequence(const int* __restrict__ query_start_loc,
                                             int num_seqs, int x, int tile, int spare) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (mid * spare + query_start_loc[mid] / tile <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = LLMCORE_WARP / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds one float
// per warp; blockDim.x is a multiple of 32 and at most 1024.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % LLMCORE_WARP;
  const int warp = threadIdx.x / LLMCORE_WARP;
  const int num_warps = blockDim.x / LLMCORE_WARP;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < num_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

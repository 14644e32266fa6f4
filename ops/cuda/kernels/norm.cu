// RMSNorm and fused residual-add + RMSNorm. One thread block per row; threads
// stride over the hidden dimension (coalesced), the sum of squares is a block
// reduction in float32. Rounding follows the torch reference: the normalised
// value is rounded to scalar_t before the weight multiplies it.
#include "common.cuh"

template <typename scalar_t>
__global__ void rms_norm(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ weight, float eps, int hidden_size,
                         long long x_stride) {
  __shared__ float scratch[LLMCORE_WARP];
  const scalar_t* row = x + blockIdx.x * x_stride;
  float sq = 0.0f;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float v = to_float(row[i]);
    sq += v * v;
  }
  const float inv = rsqrtf(block_sum(sq, scratch) / hidden_size + eps);
  scalar_t* out_row = out + (long long)blockIdx.x * hidden_size;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float normed = to_float(from_float<scalar_t>(to_float(row[i]) * inv));
    out_row[i] = from_float<scalar_t>(to_float(weight[i]) * normed);
  }
}

// out = rms_norm(x + residual), residual_out = x + residual (rounded to scalar_t
// first, as the torch reference adds in scalar_t). Each thread reads back only
// the elements it wrote itself, so no barrier is needed between the passes.
template <typename scalar_t>
__global__ void fused_add_rms_norm(scalar_t* __restrict__ out, scalar_t* __restrict__ residual_out,
                                   const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ residual,
                                   const scalar_t* __restrict__ weight, float eps,
                                   int hidden_size, long long x_stride,
                                   long long residual_stride) {
  __shared__ float scratch[LLMCORE_WARP];
  const scalar_t* x_row = x + blockIdx.x * x_stride;
  const scalar_t* r_row = residual + blockIdx.x * residual_stride;
  const long long base = (long long)blockIdx.x * hidden_size;
  float sq = 0.0f;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const scalar_t s = from_float<scalar_t>(to_float(x_row[i]) + to_float(r_row[i]));
    residual_out[base + i] = s;
    const float v = to_float(s);
    sq += v * v;
  }
  const float inv = rsqrtf(block_sum(sq, scratch) / hidden_size + eps);
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float normed = to_float(from_float<scalar_t>(to_float(residual_out[base + i]) * inv));
    out[base + i] = from_float<scalar_t>(to_float(weight[i]) * normed);
  }
}

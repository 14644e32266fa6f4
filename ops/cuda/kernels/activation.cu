// silu_and_mul: out[r, i] = silu(x[r, i]) * x[r, d + i]. Grid (rows, chunks of d);
// each thread handles one column of one row: two coalesced loads, one store.
#include "common.cuh"

template <typename scalar_t>
__global__ void silu_and_mul(scalar_t* __restrict__ out, const scalar_t* __restrict__ x, int d,
                             long long x_stride) {
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= d) return;
  const scalar_t* row = x + blockIdx.x * x_stride;
  const float gate = to_float(row[i]);
  // silu rounded to scalar_t before the product, as in the torch reference.
  const float act = to_float(from_float<scalar_t>(gate / (1.0f + expf(-gate))));
  out[(long long)blockIdx.x * d + i] = from_float<scalar_t>(act * to_float(row[d + i]));
}

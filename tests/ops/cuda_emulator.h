// A CPU emulation of the small part of CUDA that llmcore's kernels use, for tests
// on machines without a GPU: every CUDA thread of a block is a std::thread,
// __syncthreads is a block barrier, __shfl_xor_sync exchanges through a buffer
// between two warp barriers, __shared__ variables are statics (blocks run one
// after another). It checks indexing, synchronisation and arithmetic, not speed.
// nvcuda::wmma (16x16x16 tiles) is emulated too: every lane holds the whole tile
// in its fragment (element (r, c) at x[r * cols + c]) and does each operation
// itself; as on a GPU, a *_sync call waits for the whole warp first, and a lane
// reading what other lanes stored needs the kernel's own __syncwarp.
#pragma once
#define __CUDA_MMA_H__  // <mma.h> (device-only) is replaced by the emulation below
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local EmuDim3 emu_thread_idx, emu_block_idx;
inline EmuDim3 emu_block_dim, emu_grid_dim;
#define threadIdx emu_thread_idx
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

struct EmuBlock {
  explicit EmuBlock(int threads) : block(threads), exchange(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<float> exchange;
};
inline EmuBlock* emu_current_block = nullptr;

inline void __syncthreads() { emu_current_block->block.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  emu_current_block->warps[threadIdx.x / 32]->arrive_and_wait();
}

inline float __shfl_xor_sync(unsigned, float v, int offset) {
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  auto& bar = *emu_current_block->warps[warp];
  emu_current_block->exchange[t] = v;
  bar.arrive_and_wait();
  const float other = emu_current_block->exchange[warp * 32 + (lane ^ offset)];
  bar.arrive_and_wait();
  return other;
}

inline float __int_as_float(unsigned bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
using std::max;
using std::min;

template <typename F>
void emu_launch(EmuDim3 grid, EmuDim3 block, F kernel) {
  emu_grid_dim = grid;
  emu_block_dim = block;
  const int threads = block.x;  // llmcore's kernels use 1-D blocks of whole warps
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        EmuBlock state(threads);
        emu_current_block = &state;
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([=] {
            emu_thread_idx = {unsigned(t), 0, 0};
            emu_block_idx = {x, y, z};
            kernel();
          });
        for (auto& th : pool) th.join();
      }
}

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// A is M x K, B is K x N, the accumulator M x N.
template <typename Use, int M, int N, int K>
constexpr int emu_rows = std::is_same_v<Use, matrix_b> ? K : M;
template <typename Use, int M, int N, int K>
constexpr int emu_cols = std::is_same_v<Use, matrix_a> ? K : N;

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = emu_rows<Use, M, N, K>, cols = emu_cols<Use, M, N, K>;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

inline float emu_float(float x) { return x; }
inline float emu_float(__half x) { return __half2float(x); }
inline float emu_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// The device's rules: 256-bit aligned pointers, ldm a multiple of 16 bytes.
template <typename T>
inline void emu_check(const T* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 || ldm * sizeof(T) % 16) std::abort();
}

template <typename F, typename T>
inline void emu_load(F& f, const T* p, unsigned ldm, bool col) {
  __syncwarp();
  emu_check(p, ldm);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  emu_load(f, p, ldm, std::is_same_v<Layout, col_major>);
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  emu_load(f, p, ldm, layout == mem_col_major);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f,
                              unsigned ldm, layout_t layout) {
  __syncwarp();
  emu_check(p, ldm);
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const T& v) {
  for (auto& e : f.x) e = v;
}

// d = a b + c, products and sums in float32 (d may be c).
template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d,
                     const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b,
                     const fragment<accumulator, M, N, K, float>& c) {
  __syncwarp();
  float r[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += emu_float(a.x[i * K + k]) * emu_float(b.x[k * N + j]);
      r[i * N + j] = s;
    }
  std::memcpy(d.x, r, sizeof r);
}
}  // namespace nvcuda::wmma

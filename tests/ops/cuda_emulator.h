// A CPU emulation of the small part of CUDA that llmcore's kernels use, for tests
// on machines without a GPU: every CUDA thread of a block is a std::thread,
// __syncthreads is a block barrier, __shfl_xor_sync exchanges through a buffer
// between two warp barriers, __shared__ variables are statics (blocks run one
// after another). It checks indexing, synchronisation and arithmetic, not speed.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
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

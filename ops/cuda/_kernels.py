"""Every CUDA kernel llmcore launches: its source, name and parameters.

This table is the single description of the kernels' interfaces: the wrappers
launch through it, the runtime compiles its name expressions, the build check
(`nox -s cuda`) instantiates them for nvcc, and a CPU test compares it with the
`__global__` signatures in the `.cu` files.
"""

from __future__ import annotations

import torch

from ops.cuda._launch import Kernel, kernel

HEAD_SIZES = (64, 80, 96, 128, 256)  # 256: Gemma 2 and 3
# The tensor-core prefill keeps a tile's output in static shared memory (48 KB):
# up to 128; a 256 head takes the scalar prefill.
TENSOR_CORE_HEAD_SIZES = (64, 80, 96, 128)
# Options of both compilers (NVRTC at run time, nvcc in the build check). The
# conversion switches decouple cuda_fp16.h from cuda_bf16.h (CuPy bundles its own
# fp16 header, which may be older than the toolkit's bf16 one); the kernels
# convert explicitly and need neither. The sources are plain C++11, so the
# compilers' default standard (and CuPy's own -std choice) is left alone.
COMPILE_OPTIONS = (
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
)

RESHAPE_AND_CACHE = kernel(
    "kv_cache.cu",
    "reshape_and_cache",
    "const scalar_t* key",
    "const scalar_t* value",
    "scalar_t* key_cache",
    "scalar_t* value_cache",
    "const long long* slot_mapping",
    "int row_size",
    "long long key_stride",
    "long long value_stride",
)

RMS_NORM = kernel(
    "norm.cu",
    "rms_norm",
    "scalar_t* out",
    "const scalar_t* x",
    "const scalar_t* weight",
    "float eps",
    "int hidden_size",
    "long long x_stride",
)

FUSED_ADD_RMS_NORM = kernel(
    "norm.cu",
    "fused_add_rms_norm",
    "scalar_t* out",
    "scalar_t* residual_out",
    "const scalar_t* x",
    "const scalar_t* residual",
    "const scalar_t* weight",
    "float eps",
    "int hidden_size",
    "long long x_stride",
    "long long residual_stride",
)

SILU_AND_MUL = kernel(
    "activation.cu",
    "silu_and_mul",
    "scalar_t* out",
    "const scalar_t* x",
    "int d",
    "long long x_stride",
)

ROTARY_EMBEDDING = kernel(
    "rotary.cu",
    "rotary_embedding",
    "const long long* positions",
    "scalar_t* query",
    "scalar_t* key",
    "const float* cos_sin_cache",
    "int rot_dim",
    "long long query_stride",
    "long long key_stride",
    "int num_heads",
    "int num_kv_heads",
    "int head_dim",
    "int is_neox",
)

ROTARY_EMBEDDING_AND_CACHE = kernel(
    "rotary.cu",
    "rotary_embedding_and_cache",
    "const long long* positions",
    "scalar_t* query",
    "scalar_t* key",
    "const scalar_t* value",
    "scalar_t* key_cache",
    "scalar_t* value_cache",
    "const long long* slot_mapping",
    "const float* cos_sin_cache",
    "int rot_dim",
    "long long query_stride",
    "long long key_stride",
    "long long value_stride",
    "int num_heads",
    "int num_kv_heads",
    "int head_dim",
    "int kv_head_dim",
    "int is_neox",
)

PAGED_ATTENTION_DECODE = kernel(
    "attention.cu",
    "paged_attention_decode",
    "scalar_t* out",
    "float* max_logits",
    "float* exp_sums",
    "float* tmp_out",
    "const scalar_t* query",
    "const scalar_t* key_cache",
    "const scalar_t* value_cache",
    "const int* block_tables",
    "const int* seq_lens",
    "float scale",
    "int sliding_window",
    "float soft_cap",
    "int num_heads",
    "int num_kv_heads",
    "int block_size",
    "int max_blocks_per_seq",
    "long long query_stride",
    "int min_partition",
    head_sizes=HEAD_SIZES,
    # Each thread keeps 2 x 2 16-byte K/V loads in flight (64 B): at 128 registers
    # (25% occupancy, 512 threads an SM) that is 32 KiB in flight per SM, above the
    # ~22 KiB Little's law asks for 4.8 TB/s over 132 SMs at ~600 ns latency.
    max_registers=128,
)

PAGED_ATTENTION_REDUCE = kernel(
    "attention.cu",
    "paged_attention_reduce",
    "scalar_t* out",
    "const float* max_logits",
    "const float* exp_sums",
    "const float* tmp_out",
    "int num_partitions",
    "int head_size",
)

PAGED_ATTENTION_PREFILL = kernel(
    "attention.cu",
    "paged_attention_prefill",
    "scalar_t* out",
    "const scalar_t* query",
    "const scalar_t* key_cache",
    "const scalar_t* value_cache",
    "const int* block_tables",
    "const int* query_start_loc",
    "const int* seq_lens",
    "float scale",
    "int sliding_window",
    "float soft_cap",
    "int num_seqs",
    "int num_kv_heads",
    "int block_size",
    "int max_blocks_per_seq",
    "long long query_stride",
    head_sizes=HEAD_SIZES,
)

# The tensor-core prefill (WMMA has no float32 inputs): __half and bf16 only.
PAGED_ATTENTION_PREFILL_TC = kernel(
    "attention_prefill.cu",
    "paged_attention_prefill_tc",
    *(f"{a.ctype} {a.name}" for a in PAGED_ATTENTION_PREFILL.args),
    head_sizes=TENSOR_CORE_HEAD_SIZES,
    dtypes=(torch.float16, torch.bfloat16),
)

ALL_KERNELS: tuple[Kernel, ...] = (
    RESHAPE_AND_CACHE,
    RMS_NORM,
    FUSED_ADD_RMS_NORM,
    SILU_AND_MUL,
    ROTARY_EMBEDDING,
    ROTARY_EMBEDDING_AND_CACHE,
    PAGED_ATTENTION_DECODE,
    PAGED_ATTENTION_REDUCE,
    PAGED_ATTENTION_PREFILL,
    PAGED_ATTENTION_PREFILL_TC,
)

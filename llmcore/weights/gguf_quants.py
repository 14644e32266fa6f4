"""Dequantization of GGML tensor data (as stored in GGUF files) into torch tensors.

The block formats and their decoders live in `ops.quant_blocks` (the torch reference
of the quantized weights of `ops.quant`); this module is the loader's entry point to
them under gguf's type ids. Invariants (kept there): results are bit-identical to
ggml's ``dequantize_row_*`` (and so to ``gguf.quants.dequantize``), the input bytes are
never written to nor copied as a whole, and the result always owns its memory.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch

from ops import quant_blocks

# Every GGUF type `dequantize` decodes.
SUPPORTED_TYPES: frozenset[int] = quant_blocks.GGML_TYPES

# Blocks decoded per step are chosen so a step yields about this many values (read at
# each call, so tests can shrink it).
_CHUNK_VALUES = quant_blocks.CHUNK_VALUES


def _type_name(qtype: int) -> str:
    try:
        return gguf.GGMLQuantizationType(qtype).name
    except ValueError:
        return str(qtype)


def dequantize(
    data: np.ndarray | torch.Tensor,
    qtype: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decode a GGUF tensor's raw bytes into a tensor of `shape` (PyTorch order) and `dtype`.

    `data` is the tensor's bytes as stored (any dtype/shape; only its bytes matter),
    `qtype` a `gguf.GGMLQuantizationType` value. Raises ValueError for an unsupported
    type or when the bytes do not decode to exactly `shape`.
    """
    if qtype not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported GGUF quantization type {_type_name(qtype)}")
    return quant_blocks.dequantize(data, qtype, shape, dtype, chunk_values=_CHUNK_VALUES)

"""C kernel of `rotary_embedding` for float32 CPU tensors (kernels/rotary.c): in
place, neox or GPT-J pairs, partial rotary; bit-identical to the torch reference.

The kernel checks every position against the table before it rotates anything
and this wrapper turns its refusal into `IndexError` (no torch reduction per call).
"""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.layout import with_contiguous_heads

POSITION_OUT_OF_RANGE = "a position is outside the rotary cos/sin table"


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """As `ops.rotary_embedding`, in place. Heads that are not contiguous within a
    token are rotated in a copy, then copied back."""
    lib = library()
    assert lib is not None
    q, k = with_contiguous_heads(query), with_contiguous_heads(key)
    pos = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin_cache.to(torch.float32).contiguous()
    rc = lib.llmcore_rotary_embedding_f32(
        pos.data_ptr(), q.data_ptr(), q.stride(0), q.stride(1), q.shape[1],
        k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        cos_sin.data_ptr(), cos_sin.shape[0], cos_sin.shape[1], q.shape[0], int(is_neox),
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it rotates anything
        raise IndexError(POSITION_OUT_OF_RANGE)
    for rotated, target in ((q, query), (k, key)):
        if rotated is not target:
            target.copy_(rotated)

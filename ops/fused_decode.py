"""A whole decode step of a llama-family stack in one C call (kernels/decode.c).

`DecoderStack` is built once from a model's weights (norms, and each matmul as
one or more `QuantLinear` parts written side by side) and bound to the KV cache
tensors; calling it runs every layer and the final norm for a batch of decode
tokens (one new token per sequence) without returning to Python between ops. It
calls the kernels the per-op path calls, in the same order, so its result is
bit-identical to that path (tests/plugins/models/test_llama_quantized.py checks
it), which stays the reference and serves every other step (prefill, mixed batches).
The KV caches may hold float32, float16 or bfloat16 (`bind` reads their dtype); a
layer may name a sliding window and a soft cap (`DecoderLayerWeights`), passed to
its attention as the per-op path passes them to `ops.paged_attention_decode`.

`DecoderStack.build` returns None where the stack cannot run: the C library is
not built, a matmul weight is not a type the kernels take, or the attention
shape is past the kernel's limits. The model then keeps its per-op path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ops.cpu._build import library
from ops.cpu.attention import attention_supported
from ops.cpu.kv_cache import KV_DTYPES, SLOT_OUT_OF_RANGE
from ops.cpu.rotary import POSITION_OUT_OF_RANGE
from ops.quant import DENSE_MIN_TOKENS, QuantLinear, QuantType, kernels_support

MAX_PARTS = 3  # weight parts of one fused matmul (q, k, v)

_p, _i64, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Linear(ctypes.Structure):
    _fields_ = [
        ("num_parts", _i64),
        ("part", _p * MAX_PARTS),
        ("offset", _i64 * MAX_PARTS),
        ("bias", _p),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", _p),
        ("post_norm", _p),
        ("qkv", _Linear),
        ("o", _Linear),
        ("gate_up", _Linear),
        ("down", _Linear),
        ("key_cache", _p),
        ("value_cache", _p),
        ("sliding_window", _i64),
        ("soft_cap", _f32),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("num_layers", _i64),
        ("hidden", _i64),
        ("intermediate", _i64),
        ("num_heads", _i64),
        ("num_kv_heads", _i64),
        ("head_dim", _i64),
        ("block_size", _i64),
        ("num_slots", _i64),
        ("kv_dtype", _i64),
        ("eps", _f32),
        ("scale", _f32),
        ("cos_sin", _p),
        ("num_positions", _i64),
        ("rotary_dim", _i64),
        ("is_neox", _i64),
        ("final_norm", _p),
        ("layers", ctypes.POINTER(_Layer)),
    ]


_FAILURES = {
    1: (RuntimeError, "a quantized matmul had no kernel for its weight type"),
    2: (IndexError, POSITION_OUT_OF_RANGE),
    3: (IndexError, SLOT_OUT_OF_RANGE),
    4: (RuntimeError, "the attention kernel refused its shape"),
}


@dataclass(slots=True)
class DecoderLayerWeights:
    """One layer: its two norms and four matmuls (each a list of parts whose
    outputs sit side by side; `qkv_bias` spans all of the qkv parts), and the
    options of its attention (as `ops.paged_attention_decode`'s)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Sequence[QuantLinear]
    o: Sequence[QuantLinear]
    gate_up: Sequence[QuantLinear]
    down: Sequence[QuantLinear]
    qkv_bias: torch.Tensor | None = None
    sliding_window: int | None = None
    soft_cap: float | None = None


@dataclass(slots=True)
class StackShape:
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    scale: float


def _linear(parts: Sequence[QuantLinear], bias: torch.Tensor | None) -> _Linear:
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"a fused matmul takes 1 to {MAX_PARTS} parts, got {len(parts)}")
    out = _Linear()
    out.num_parts = len(parts)
    offset = 0
    for i, part in enumerate(parts):
        out.part[i] = ctypes.addressof(part.descriptor)
        out.offset[i] = offset
        offset += part.weight.rows
    out.bias = bias.data_ptr() if bias is not None else None
    return out


class DecoderStack:
    """The decode step of a whole stack; see the module doc."""

    def __init__(
        self,
        shape: StackShape,
        layers: Sequence[DecoderLayerWeights],
        final_norm: torch.Tensor,
        cos_sin: torch.Tensor,
        *,
        is_neox: bool = True,
    ) -> None:
        self.shape = shape
        lib = library()
        assert lib is not None, "DecoderStack.build checks the library first"
        self.lib = lib
        # Everything the C structs point at is kept here, alive and contiguous.
        self._keep: list[object] = []
        self._weights = list(layers)
        self._final_norm = self._f32(final_norm)
        self._cos_sin = self._f32(cos_sin)
        self._layers = (_Layer * len(layers))()
        for slot, layer in zip(self._layers, layers, strict=True):
            slot.input_norm = self._f32(layer.input_norm).data_ptr()
            slot.post_norm = self._f32(layer.post_norm).data_ptr()
            bias = None if layer.qkv_bias is None else self._f32(layer.qkv_bias)
            slot.qkv = _linear(layer.qkv, bias)
            slot.o = _linear(layer.o, None)
            slot.gate_up = _linear(layer.gate_up, None)
            slot.down = _linear(layer.down, None)
            slot.sliding_window = layer.sliding_window or 0
            slot.soft_cap = layer.soft_cap or 0.0
        m = self._model = _Model()
        m.num_layers = len(layers)
        m.hidden, m.intermediate = shape.hidden, shape.intermediate
        m.num_heads, m.num_kv_heads = shape.num_heads, shape.num_kv_heads
        m.head_dim = shape.head_dim
        m.eps, m.scale = shape.eps, shape.scale
        m.cos_sin = self._cos_sin.data_ptr()
        m.num_positions, m.rotary_dim = self._cos_sin.shape
        m.is_neox = int(is_neox)
        m.final_norm = self._final_norm.data_ptr()
        m.layers = self._layers
        self._bound: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Steps of more tokens take the per-op path, where float rows reach oneDNN.
        floats = any(
            p.weight.qtype in (QuantType.BF16, QuantType.F32)
            for layer in layers
            for parts in (layer.qkv, layer.o, layer.gate_up, layer.down)
            for p in parts
        )
        self.max_tokens = DENSE_MIN_TOKENS - 1 if floats else None
        self._scratch = torch.empty(0)

    @classmethod
    def build(
        cls,
        shape: StackShape,
        layers: Sequence[DecoderLayerWeights],
        final_norm: torch.Tensor,
        cos_sin: torch.Tensor,
        *,
        is_neox: bool = True,
        block_size: int = 16,
    ) -> DecoderStack | None:
        """The stack, or None where it cannot run (see the module doc)."""
        if library() is None or not layers:
            return None
        if not attention_supported(shape.num_heads, shape.num_kv_heads, shape.head_dim, block_size):
            return None
        for layer in layers:
            for parts in (layer.qkv, layer.o, layer.gate_up, layer.down):
                if not 1 <= len(parts) <= MAX_PARTS:
                    return None
                if not all(
                    isinstance(p, QuantLinear) and kernels_support(p.weight.qtype) for p in parts
                ):
                    return None
        return cls(shape, layers, final_norm, cos_sin, is_neox=is_neox)

    def _f32(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(torch.float32).contiguous()
        self._keep.append(t)
        return t

    def bind(self, kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Point every layer at its (key, value) cache: contiguous,
        `[num_blocks, block_size, kv_heads, head_dim]`, one pair per layer, all of
        one dtype among float32, float16 and bfloat16."""
        if len(kv_caches) != len(self._layers):
            raise ValueError(f"{len(kv_caches)} caches for {len(self._layers)} layers")
        s = self.shape
        dtype = kv_caches[0][0].dtype
        for slot, (key, value) in zip(self._layers, kv_caches, strict=True):
            for cache in (key, value):
                if cache.dtype not in KV_DTYPES or cache.dtype != dtype:
                    raise ValueError(
                        "the decode stack takes caches of one dtype among float32, float16 "
                        f"and bfloat16, got {cache.dtype} (first: {dtype})"
                    )
                if not cache.is_contiguous():
                    raise ValueError("the decode stack takes contiguous caches")
                if tuple(cache.shape[2:]) != (s.num_kv_heads, s.head_dim):
                    raise ValueError(f"cache shape {tuple(cache.shape)} does not fit the model")
            slot.key_cache, slot.value_cache = key.data_ptr(), value.data_ptr()
        num_blocks, block_size = kv_caches[0][0].shape[:2]
        self._model.block_size = block_size
        self._model.num_slots = num_blocks * block_size
        self._model.kv_dtype = KV_DTYPES[dtype]
        self._bound = list(kv_caches)

    @property
    def bound_to(self) -> torch.Tensor | None:
        """The first layer's key cache it is bound to (None before `bind`)."""
        return self._bound[0][0] if self._bound else None

    def __call__(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
    ) -> torch.Tensor:
        """`hidden` [n, hidden] float32 token embeddings -> the final-normed hidden
        states (written in place and returned). One token per sequence: row i
        belongs to sequence i of `block_tables`/`seq_lens`."""
        assert self._bound, "bind the KV caches first"
        n = hidden.shape[0]
        assert hidden.dtype == torch.float32 and hidden.is_contiguous()
        assert hidden.shape[1] == self.shape.hidden
        pos = positions.to(torch.int64).contiguous()
        slots = slot_mapping.to(torch.int64).contiguous()
        tables = block_tables.to(torch.int32).contiguous()
        lens = seq_lens.to(torch.int32).contiguous()
        model = ctypes.byref(self._model)
        need = self.lib.llmcore_decode_scratch_floats(model, n)
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need, dtype=torch.float32)
        rc = self.lib.llmcore_decode_step(
            model, hidden.data_ptr(), n, pos.data_ptr(), slots.data_ptr(),
            tables.data_ptr(), tables.stride(0), lens.data_ptr(), self._scratch.data_ptr(),
        )  # fmt: skip
        if rc:
            kind, message = _FAILURES.get(rc, (RuntimeError, f"decode step failed ({rc})"))
            raise kind(message)
        return hidden

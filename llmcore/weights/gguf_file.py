"""Reading a GGUF file: metadata, the model config it implies, and its tensors.

Parsing is the `gguf` package's (a memory map, no copies); this module checks the
file is whole before anything is dequantized, turns every failure into an llmcore
error that names the file, and maps GGUF metadata keys onto `ModelConfig`.
Tensors come out under their GGUF names, dequantized to the runtime dtype or, for
the quantized CPU path, as `ops.quant.QuantWeight`s of the bytes as stored; the
architecture plugin translates names and layouts.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from llmcore.errors import CorruptModelFileError, UnsupportedQuantizationError
from llmcore.model_config import ModelConfig
from llmcore.weights.gguf_quants import SUPPORTED_TYPES, dequantize
from ops.quant import QuantType, QuantWeight, kernels_support

# GGML types that are block-quantized (not plain float32/16/bf16).
QUANTIZED_TYPES = frozenset(SUPPORTED_TYPES) - {QuantType.F32, QuantType.F16, QuantType.BF16}


def quantized_kernel_types() -> frozenset[int]:
    """The quantized GGML types the CPU kernels multiply as stored (none without
    the kernel library)."""
    known = {int(t) for t in QuantType}
    return frozenset(q for q in QUANTIZED_TYPES if q in known and kernels_support(q))


class GGUFFile:
    """An open GGUF file. Scalar metadata is read eagerly; arrays on request."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except Exception as exc:  # gguf raises many kinds on a bad file
            raise CorruptModelFileError(
                f"{self.path}: truncated or corrupt GGUF file ({type(exc).__name__}: {exc})"
            ) from exc
        self._check_extents()
        self.metadata: dict[str, Any] = {
            name: field.contents()
            for name, field in self._reader.fields.items()
            if field.types and field.types[0] != gguf.GGUFValueType.ARRAY
        }

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """A parsed GGUFFile for `path`: inside `shared_parses()`, the one parse
        every caller shares (parsing a large vocabulary takes a second, and the
        model loader and the tokenizer read the same file); else a fresh one."""
        p = Path(path).resolve()
        try:
            stat = p.stat()
        except OSError:
            return cls(p)
        key = (p, stat.st_size, stat.st_mtime_ns)
        with _SHARING.lock:
            if _SHARING.depth == 0:
                shared = None
            else:
                shared = _SHARING.files.get(key)
        if shared is not None:
            return shared
        parsed = cls(p)
        with _SHARING.lock:
            if _SHARING.depth > 0:
                _SHARING.files.setdefault(key, parsed)
        return parsed

    def _check_extents(self) -> None:
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise CorruptModelFileError(
                    f"{self.path}: truncated: tensor {t.name!r} ends at byte "
                    f"{t.data_offset + t.n_bytes} but the file has {size} bytes"
                )

    def array(self, key: str) -> list[Any] | None:
        """The contents of an array-valued metadata key, or None if absent."""
        field = self._reader.fields.get(key)
        return None if field is None else list(field.contents())

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "<missing>"))

    def tensor_names(self) -> set[str]:
        return {t.name for t in self._reader.tensors}

    def check_quantization(self) -> None:
        """Raise UnsupportedQuantizationError naming the first tensor we cannot read."""
        for t in self._reader.tensors:
            if int(t.tensor_type) not in SUPPORTED_TYPES:
                supported = ", ".join(
                    sorted(gguf.GGMLQuantizationType(q).name for q in SUPPORTED_TYPES)
                )
                raise UnsupportedQuantizationError(
                    f"{self.path}: tensor {t.name!r} uses GGUF quantization type "
                    f"{t.tensor_type.name}, which llmcore cannot dequantize "
                    f"(supported: {supported})"
                )

    def tensors(
        self, dtype: torch.dtype, *, keep_quantized: bool = False
    ) -> Iterator[tuple[str, torch.Tensor | QuantWeight]]:
        """Every tensor in PyTorch shape order: dequantized to `dtype`, or, with
        `keep_quantized`, each quantized matrix whose type the CPU kernels take as a
        `QuantWeight` over the file's bytes as stored (a copy out of the memory map)."""
        self.check_quantization()
        kept = quantized_kernel_types() if keep_quantized else frozenset()
        for t in self._reader.tensors:
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            raw = np.asarray(t.data)
            qtype = int(t.tensor_type)
            try:
                if len(shape) == 2 and qtype in kept:
                    yield t.name, QuantWeight.from_raw(QuantType(qtype), raw, shape)
                else:
                    yield t.name, dequantize(raw, qtype, shape, dtype)
            except ValueError as exc:
                raise CorruptModelFileError(f"{self.path}: tensor {t.name!r}: {exc}") from exc

    def is_quantized(self) -> bool:
        """Whether any matrix is stored in a block-quantized type."""
        return any(int(t.tensor_type) in QUANTIZED_TYPES for t in self._reader.tensors)

    def model_config(self, architecture: str) -> ModelConfig:
        """The llama-family config from `{arch}.*` and `tokenizer.ggml.*` keys."""
        md, a = self.metadata, self.architecture
        try:
            hidden = int(md[f"{a}.embedding_length"])
            heads = int(md[f"{a}.attention.head_count"])
            config = ModelConfig(
                architecture=architecture,
                vocab_size=int(md.get(f"{a}.vocab_size") or self._vocab_size()),
                hidden_size=hidden,
                intermediate_size=int(md[f"{a}.feed_forward_length"]),
                num_hidden_layers=int(md[f"{a}.block_count"]),
                num_attention_heads=heads,
                num_key_value_heads=int(md.get(f"{a}.attention.head_count_kv", heads)),
                head_dim=int(md.get(f"{a}.attention.key_length", hidden // heads)),
                max_position_embeddings=int(md[f"{a}.context_length"]),
                rms_norm_eps=float(md.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
                rope_theta=float(md.get(f"{a}.rope.freq_base", 10000.0)),
                rope_scaling=self._rope_scaling(),
                tie_word_embeddings="output.weight" not in self.tensor_names(),
                attention_bias="blk.0.attn_q.bias" in self.tensor_names(),
                sliding_window=_optional_int(md.get(f"{a}.attention.sliding_window")),
                bos_token_id=_optional_int(md.get("tokenizer.ggml.bos_token_id")),
                eos_token_ids=_eos_ids(md),
                raw=dict(md),
            )
        except KeyError as exc:
            raise CorruptModelFileError(
                f"{self.path}: GGUF metadata lacks the key {exc.args[0]!r}"
            ) from exc
        return config

    def _vocab_size(self) -> int:
        tokens = self._reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise KeyError("tokenizer.ggml.tokens")
        return len(tokens.data)

    def _rope_scaling(self) -> dict[str, Any] | None:
        a = self.architecture
        kind = self.metadata.get(f"{a}.rope.scaling.type")
        factor = self.metadata.get(f"{a}.rope.scaling.factor")
        if kind in (None, "none") or not factor:
            return None
        scaling: dict[str, Any] = {"rope_type": str(kind), "factor": float(factor)}
        original = self.metadata.get(f"{a}.rope.scaling.original_context_length")
        if original:  # YaRN's pre-scaling context (Hugging Face's name)
            scaling["original_max_position_embeddings"] = int(original)
        return scaling


class _Sharing:
    """The parses `GGUFFile.open` shares while some `shared_parses()` is open.
    They go when the last one closes: the gguf reader's parse of a vocabulary is
    ~150 MB of Python objects (one per token and merge), needed only while the
    model and its tokenizer load."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.files: dict[tuple[Path, int, int], GGUFFile] = {}


_SHARING = _Sharing()


@contextlib.contextmanager
def shared_parses() -> Iterator[None]:
    """Within it, `GGUFFile.open` parses each file once for every caller."""
    with _SHARING.lock:
        _SHARING.depth += 1
    try:
        yield
    finally:
        with _SHARING.lock:
            _SHARING.depth -= 1
            if _SHARING.depth == 0:
                _SHARING.files.clear()


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _eos_ids(md: dict[str, Any]) -> list[int]:
    ids = [md.get("tokenizer.ggml.eos_token_id"), md.get("tokenizer.ggml.eot_token_id")]
    return sorted({int(i) for i in ids if i is not None})

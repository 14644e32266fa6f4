"""Pooling: one vector per sequence from a model's hidden states, configured as
sentence-transformers configures it, and the parameters and output of a pooling
(`encode`) request.

`PoolingConfig.from_folder` reads `modules.json`, the Pooling module's
`config.json` (mean, CLS, last-token or max pooling), whether a `Normalize` module
follows, and `max_seq_length` from `sentence_bert_config.json`. A folder without
them (or a GGUF file) gets the default of its kind: CLS for encoders, last token for
decoders, normalized. Invariant: `pool` sees a flat `[T, hidden]` batch whose
sequences are the `query_start_loc` segments, and returns float32 `[B, hidden]`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmcore.errors import CorruptModelFileError, InvalidRequestError


class PoolingMethod(enum.Enum):
    CLS = "cls"
    MEAN = "mean"
    LAST = "last"
    MAX = "max"


# sentence-transformers' Pooling config keys, in the order it checks them.
_MODES = {
    "pooling_mode_cls_token": PoolingMethod.CLS,
    "pooling_mode_mean_tokens": PoolingMethod.MEAN,
    "pooling_mode_lasttoken": PoolingMethod.LAST,
    "pooling_mode_max_tokens": PoolingMethod.MAX,
}
_POOLING_MODULE = "sentence_transformers.models.Pooling"
_NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    method: PoolingMethod
    normalize: bool = True
    max_seq_length: int | None = None  # sentence-transformers' cap on tokens per input
    matryoshka_dimensions: tuple[int, ...] | None = None  # None: `dimensions` unsupported

    @classmethod
    def from_folder(cls, path: Path, *, is_encoder: bool) -> PoolingConfig:
        """The pooling of the model at `path` (a folder, or a file: the defaults)."""
        default = cls(PoolingMethod.CLS if is_encoder else PoolingMethod.LAST)
        folder = path if path.is_dir() else path.parent
        modules = _read(folder / "modules.json") if path.is_dir() else None
        if not isinstance(modules, list):
            return _with_folder_extras(default, folder if path.is_dir() else None)
        method, normalize = default.method, False
        for module in modules:
            kind = module.get("type") if isinstance(module, dict) else None
            if kind == _POOLING_MODULE:
                method = _method(_read(folder / str(module.get("path", "")) / "config.json"))
            elif kind == _NORMALIZE_MODULE:
                normalize = True
        return _with_folder_extras(cls(method, normalize), folder)


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CorruptModelFileError(f"{path}: not valid JSON: {exc}") from exc


def _method(config: Any) -> PoolingMethod:
    if isinstance(config, dict):
        if isinstance(config.get("pooling_mode"), str):
            name = config["pooling_mode"].lower()
            named = {"lasttoken": "last", "mean_tokens": "mean", "cls_token": "cls"}
            return PoolingMethod(named.get(name, name))
        for key, method in _MODES.items():
            if config.get(key):
                return method
    raise CorruptModelFileError(f"unsupported sentence-transformers pooling config: {config}")


def _with_folder_extras(config: PoolingConfig, folder: Path | None) -> PoolingConfig:
    """`max_seq_length` (sentence_bert_config.json) and matryoshka dimensions (config.json)."""
    if folder is None:
        return config
    sbert = _read(folder / "sentence_bert_config.json")
    max_len = sbert.get("max_seq_length") if isinstance(sbert, dict) else None
    hf = _read(folder / "config.json")
    dims: tuple[int, ...] | None = None
    if isinstance(hf, dict) and (hf.get("is_matryoshka") or hf.get("matryoshka_dimensions")):
        dims = tuple(int(d) for d in hf.get("matryoshka_dimensions") or ())
    return PoolingConfig(config.method, config.normalize, int(max_len) if max_len else None, dims)


def pool(
    hidden: torch.Tensor, query_start_loc: torch.Tensor, method: PoolingMethod
) -> torch.Tensor:
    """One float32 vector per sequence of the flat `hidden` `[T, H]`."""
    starts, ends = query_start_loc[:-1], query_start_loc[1:]
    if method is PoolingMethod.CLS:
        return hidden.index_select(0, starts).float()
    if method is PoolingMethod.LAST:
        return hidden.index_select(0, ends - 1).float()
    lengths = ends - starts
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    out = hidden.new_zeros(len(lengths), hidden.shape[1], dtype=torch.float32)
    if method is PoolingMethod.MEAN:
        out.index_add_(0, segment, hidden.float())
        return out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
    index = segment[:, None].expand(-1, hidden.shape[1])
    return out.scatter_reduce_(0, index, hidden.float(), "amax", include_self=False)


@dataclass(slots=True)
class PoolingParams:
    """What a pooling request asks for beyond the model's configured pooling."""

    dimensions: int | None = None  # keep the first n dimensions (matryoshka models)
    normalize: bool | None = None  # None: as the model is configured

    def validate(self, hidden_size: int, config: PoolingConfig) -> None:
        dims = self.dimensions
        if dims is None or dims == hidden_size:
            return
        if config.matryoshka_dimensions is None:
            raise InvalidRequestError(
                f"dimensions: this model does not support matryoshka dimensions; it gives "
                f"{hidden_size}-dimensional embeddings only",
                param="dimensions",
            )
        allowed = config.matryoshka_dimensions
        if dims < 1 or dims > hidden_size or (allowed and dims not in allowed):
            choices = ", ".join(map(str, allowed)) if allowed else f"1 to {hidden_size}"
            raise InvalidRequestError(
                f"dimensions: {dims} is not supported; choose {choices}", param="dimensions"
            )


def finish_vector(
    vector: torch.Tensor, params: PoolingParams, config: PoolingConfig
) -> torch.Tensor:
    """Truncate to `params.dimensions` and (re)normalize as asked (float32 `[D]`)."""
    if params.dimensions is not None:
        vector = vector[: params.dimensions]
    normalize = config.normalize if params.normalize is None else params.normalize
    return F.normalize(vector, p=2, dim=-1) if normalize else vector


@dataclass(slots=True)
class PoolingOutput:
    """The pooled vector of one request (float32, on the CPU)."""

    request_id: str
    prompt_token_ids: list[int]
    data: torch.Tensor
    finished: bool = field(default=True)

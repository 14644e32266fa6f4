"""Reading a Hugging Face model folder: `config.json`, `generation_config.json` and
the `*.safetensors` weights (one file, or shards listed in
`model.safetensors.index.json`). Every failure becomes an llmcore error naming the
file; tensors come out in the runtime dtype under their Hugging Face names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llmcore.errors import CorruptModelFileError, ModelNotFoundError
from llmcore.model_config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CorruptModelFileError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorruptModelFileError(f"{path}: expected a JSON object")
    return data


def read_config_json(folder: Path) -> dict[str, Any]:
    """The raw `config.json` of a model folder."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{folder}: no config.json; not a Hugging Face model folder")
    return _read_json(config_path)


def architecture_of(config: dict[str, Any]) -> str:
    """The first of `architectures`, else the `model_type`."""
    names = config.get("architectures") or [config.get("model_type") or "<missing>"]
    return str(names[0])


def read_config(folder: Path, config: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` from the folder's `config.json` dict and `generation_config.json`."""
    gen_path = folder / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else None
    try:
        return ModelConfig.from_hf(config, generation)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptModelFileError(
            f"{folder / 'config.json'}: missing or invalid field: {exc}"
        ) from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, else every `*.safetensors`."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptModelFileError(f"{index}: no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CorruptModelFileError(f"{index}: lists missing shards: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder}: no *.safetensors weights (only safetensors is read)")
    return files


def iter_tensors(folder: Path, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name).to(dtype)
        except SafetensorError as exc:
            raise CorruptModelFileError(f"{path}: corrupt or truncated safetensors: {exc}") from exc

"""Loading a model: a GGUF file or a Hugging Face folder, into an architecture plugin.

`load_model(path)` decides the format, reads the config, asks the registry for the
plugin class, and streams the weights (dequantized, in the runtime dtype) into it.
Every way this can fail ends in an `llmcore.errors.ModelLoadError` that names the
file and what to do; nothing deeper leaks out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llmcore import registry
from llmcore.cpu_malloc import tune_malloc
from llmcore.default_model import default_chat_model_path
from llmcore.errors import ModelNotFoundError
from llmcore.model_api import CausalLM
from llmcore.model_config import ModelConfig, resolve_dtype
from llmcore.weights import hf_folder
from llmcore.weights.gguf_file import GGUFFile


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    model: CausalLM
    dtype: torch.dtype
    device: torch.device

    @property
    def max_model_len(self) -> int:
        """Longest sequence served: the trained context, capped at a sliding window
        (llmcore's attention is full attention, exact only within the window)."""
        window = self.config.sliding_window
        limit = self.config.max_position_embeddings
        return min(limit, window) if window else limit


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model from a `.gguf` file or a Hugging Face folder (config.json +
    safetensors); `None` loads the embedded default chat model."""
    model_path = Path(path) if path is not None else default_chat_model_path()
    if not model_path.exists():
        raise ModelNotFoundError(f"model path {str(model_path)!r} does not exist")
    dev = torch.device(device)
    if dev.type == "cpu":
        tune_malloc()
    if model_path.is_file():
        if model_path.suffix != ".gguf":
            raise ModelNotFoundError(
                f"{model_path}: expected a .gguf file or a Hugging Face model folder"
            )
        return _load_gguf(model_path, dtype, dev)
    return _load_hf(model_path, dtype, dev)


def _load_gguf(path: Path, dtype: str, device: torch.device) -> LoadedModel:
    gguf_file = GGUFFile.open(path)
    architecture = registry.architecture_from_gguf(gguf_file.architecture)
    cls = registry.resolve_model_class(architecture)
    gguf_file.check_quantization()
    config = gguf_file.model_config(architecture)
    torch_dtype = resolve_dtype(dtype, device, config.torch_dtype)
    model = cls(config, torch_dtype, device)

    def weights() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in gguf_file.tensors(torch_dtype):
            yield cls.gguf_to_hf(name, tensor, config)

    model.load_weights(weights())
    return LoadedModel(path, config, model, torch_dtype, device)


def _load_hf(path: Path, dtype: str, device: torch.device) -> LoadedModel:
    raw = hf_folder.read_config_json(path)
    cls = registry.resolve_model_class(hf_folder.architecture_of(raw))
    config = hf_folder.read_config(path, raw)
    torch_dtype = resolve_dtype(dtype, device, config.torch_dtype)
    model = cls(config, torch_dtype, device)
    # a plugin may take its weights in another dtype and convert them itself (BERT
    # keeps its norms and embeddings in float32 under a 16-bit matmul dtype)
    load_dtype = getattr(model, "weights_dtype", torch_dtype)
    model.load_weights(hf_folder.iter_tensors(path, load_dtype))
    return LoadedModel(path, config, model, torch_dtype, device)

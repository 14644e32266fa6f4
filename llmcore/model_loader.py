"""Loading a model: a GGUF file or a Hugging Face folder, into an architecture plugin.

`load_model(path)` decides the format, reads the config, asks the registry for the
plugin class, and streams the weights into it: dequantized to the runtime dtype, or,
for a quantized GGUF on the CPU, as the blocks stored in the file (`ops.quant`).
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
from llmcore.errors import ModelNotFoundError, UnsupportedArchitectureError
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
    # how the matmul weights are held when not in `dtype`: "gguf" (a GGUF's
    # quantized blocks as stored), "int8" (W8A8 rows), "bf16" (bfloat16 under
    # float32 activations on the CPU); None: in `dtype`
    weight_format: str | None = None

    @property
    def max_model_len(self) -> int:
        """Longest sequence served: the trained context; capped at a sliding window
        the model's plugin does not apply (its attention would be full attention,
        exact only within the window)."""
        window = self.config.sliding_window
        limit = self.config.max_position_embeddings
        applied = any(w is not None for w in getattr(self.model, "layer_windows", ()))
        return min(limit, window) if window and not applied else limit


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    quantization: str | None = None,
) -> LoadedModel:
    """Load a model from a `.gguf` file or a Hugging Face folder (config.json +
    safetensors); `None` loads the embedded default chat model.

    On the CPU a quantized GGUF keeps its blocks as stored under `dtype="auto"`
    (float32 activations); any explicit dtype dequantizes.
    `quantization="int8"` turns float matmul weights into int8 rows at load."""
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
        return _load_gguf(model_path, dtype, dev, quantization)
    return _load_hf(model_path, dtype, dev, quantization)


def _takes_formats(cls: type) -> bool:
    """The plugin takes weights in formats of `ops.quant` (`set_quantization`)."""
    return hasattr(cls, "set_quantization")


def _compute_dtype(
    cls: type, torch_dtype: torch.dtype, device: torch.device, quantization: str | None
) -> tuple[torch.dtype, str | None]:
    """The dtype the model computes in and the weight format it is asked for. On
    the CPU, bfloat16 means bfloat16 weights through the BF16 kernels with float32
    activations and KV cache (the C kernels' dtype), where the plugin takes it."""
    if quantization in ("None", "gguf"):
        quantization = None
    if device.type == "cpu" and torch_dtype == torch.bfloat16 and _takes_formats(cls):
        if quantization is None:
            return torch.float32, "bf16"
    return torch_dtype, quantization


def _set_quantization(model: CausalLM, quantization: str | None) -> None:
    if quantization is None:
        return
    setter = getattr(model, "set_quantization", None)
    if setter is None:
        raise UnsupportedArchitectureError(
            f"--quantization {quantization}: {type(model).__name__} takes no quantization"
        )
    setter(quantization)


def _load_gguf(
    path: Path, dtype: str, device: torch.device, quantization: str | None
) -> LoadedModel:
    gguf_file = GGUFFile.open(path)
    architecture = registry.architecture_from_gguf(gguf_file.architecture)
    cls = registry.resolve_model_class(architecture)
    gguf_file.check_quantization()
    config = gguf_file.model_config(architecture)
    # a plugin whose family has metadata beyond the llama keys reads it from
    # `config.raw` (the GGUF metadata) into the config, under Hugging Face names
    adapt = getattr(cls, "adapt_gguf_config", None)
    if adapt is not None:
        config = adapt(config)
    torch_dtype, formats = _compute_dtype(
        cls, resolve_dtype(dtype, device, config.torch_dtype), device, quantization
    )
    model = cls(config, torch_dtype, device)
    _set_quantization(model, formats)
    keep = dtype == "auto" and device.type == "cpu" and torch_dtype == torch.float32
    keep = keep and _takes_formats(cls) and formats is None

    def weights() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in gguf_file.tensors(torch_dtype, keep_quantized=keep):
            yield cls.gguf_to_hf(name, tensor, config)  # type: ignore[arg-type]

    model.load_weights(weights())
    weight_format = "gguf" if keep and gguf_file.is_quantized() else formats
    return LoadedModel(path, config, model, torch_dtype, device, weight_format)


def _load_hf(path: Path, dtype: str, device: torch.device, quantization: str | None) -> LoadedModel:
    raw = hf_folder.read_config_json(path)
    cls = registry.resolve_model_class(hf_folder.architecture_of(raw))
    # a plugin whose config.json nests the model's config (a multimodal checkpoint
    # served as text) turns it into the keys `ModelConfig` reads
    adapt = getattr(cls, "adapt_hf_config", None)
    if adapt is not None:
        raw = adapt(raw)
    config = hf_folder.read_config(path, raw)
    torch_dtype, formats = _compute_dtype(
        cls, resolve_dtype(dtype, device, config.torch_dtype), device, quantization
    )
    model = cls(config, torch_dtype, device)
    _set_quantization(model, formats)
    # a plugin may take its weights in another dtype and convert them itself (BERT
    # keeps its norms and embeddings in float32 under a 16-bit matmul dtype)
    load_dtype = getattr(model, "weights_dtype", torch_dtype)
    model.load_weights(hf_folder.iter_tensors(path, load_dtype))
    return LoadedModel(path, config, model, torch_dtype, device, formats)

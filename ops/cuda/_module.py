"""Compiling and launching the kernels through CuPy (imported here, lazily).

Sources are read with `importlib.resources` from `ops/cuda/kernels/` (package
data), `common.cuh` inlined, and compiled by `cupy.RawModule` with the name
expressions of every kernel of that file for one dtype. Modules are cached per
(source, dtype, device) and functions per name expression and device; CuPy's
own on-disk cache makes a second process skip NVRTC. Launches go on torch's
current stream, with tensors passed as raw device pointers (no copies).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import logging
from typing import Any

import torch

from ops.cuda._kernels import ALL_KERNELS, COMPILE_OPTIONS
from ops.cuda._launch import Launch, build_args

_INCLUDE = '#include "common.cuh"'
log = logging.getLogger("llmcore.ops")


@functools.cache
def cupy_importable() -> bool:
    """Whether CuPy is installed (found, not imported)."""
    return importlib.util.find_spec("cupy") is not None


def kernel_source(filename: str) -> str:
    """The text of one `.cu` file with `common.cuh` inlined (NVRTC sees one string)."""
    folder = importlib.resources.files("ops.cuda") / "kernels"
    text = (folder / filename).read_text(encoding="utf-8")
    common = (folder / "common.cuh").read_text(encoding="utf-8").replace("#pragma once\n", "")
    return text.replace(_INCLUDE, common, 1)


@functools.cache
def _module(source: str, dtype: torch.dtype, device_index: int) -> Any:
    import cupy

    expressions = [
        expr for k in ALL_KERNELS if k.source == source for expr in k.name_expressions(dtype)
    ]
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=kernel_source(source), options=COMPILE_OPTIONS, name_expressions=expressions
        )
        module.compile()
    return module


@functools.cache
def _function(source: str, dtype: torch.dtype, expression: str, device_index: int) -> Any:
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(source, dtype, device_index).get_function(expression)


def _device_index(launch: Launch) -> int:
    """The CUDA device of the launch's tensors."""
    device = next(v.device for v in launch.values.values() if isinstance(v, torch.Tensor))
    return device.index if device.index is not None else torch.cuda.current_device()


def compiles(launch: Launch) -> bool:
    """Whether the launch's kernel builds on its device (once per instantiation and
    device; a failure is logged once). For a kernel that has a fallback: the
    tensor-core prefill needs `mma.h`, which a machine's CUDA headers may lack."""
    index = _device_index(launch)
    return _compiles(launch.kernel.source, launch.dtype, launch.name_expression, index)


@functools.cache
def _compiles(source: str, dtype: torch.dtype, expression: str, device_index: int) -> bool:
    try:
        _function(source, dtype, expression, device_index)
    except Exception as exc:  # NVRTC's error, a missing header: the caller falls back
        log.warning("CUDA kernel %s does not build here (%s); using its fallback", expression, exc)
        return False
    return True


def run(launch: Launch) -> None:
    """Launch one kernel on the current torch stream of its tensors' device."""
    import cupy

    args = build_args(launch)
    index = _device_index(launch)
    fn = _function(launch.kernel.source, launch.dtype, launch.name_expression, index)
    stream = torch.cuda.current_stream(index).cuda_stream
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream, index):
        fn(launch.grid, launch.block, args)

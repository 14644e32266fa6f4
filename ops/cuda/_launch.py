"""Declarative kernel signatures and the launch arguments built from them.

A `Kernel` names its source file, its `__global__` function and its parameters
in order, each with the C type written in the source. A wrapper fills a `Launch`
with values by parameter name; `build_args` turns it into the argument tuple
CuPy passes to the kernel, checking every value against its C type on the way (a
tensor's dtype against the pointee, an integer's range against its width). A
test parses the `.cu` sources and compares them with these specs, so the order
and types Python sends are the ones the kernel declares. Nothing here imports
CuPy or needs a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# The storage types a kernel is instantiated for, by the C name of `scalar_t`.
SCALAR_TYPES: dict[torch.dtype, str] = {
    torch.float32: "float",
    torch.float16: "__half",
    torch.bfloat16: "__nv_bfloat16",
}
# Pointee types other than scalar_t, and the tensor dtype each must be.
POINTEE_DTYPES: dict[str, torch.dtype] = {
    "float": torch.float32,
    "int": torch.int32,
    "long long": torch.int64,
}
# Value types and the numpy scalar (of the same width) CuPy packs them as.
VALUE_TYPES: dict[str, type[np.generic]] = {
    "int": np.int32,
    "long long": np.int64,
    "float": np.float32,
}
INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**31), 2**31 - 1),
    "long long": (-(2**63), 2**63 - 1),
}
POINTER = np.uint64  # a device address, as wide as a pointer


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    ctype: str  # as declared, without __restrict__: "const scalar_t*", "int", ...

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def pointee(self) -> str:
        return self.ctype.removeprefix("const ").removesuffix("*").strip()


@dataclass(frozen=True, slots=True)
class Kernel:
    source: str  # file name under ops/cuda/kernels/
    name: str  # the __global__ function template
    args: tuple[Arg, ...]
    head_sizes: tuple[int, ...] = ()  # values of a second `int HEAD_SIZE` template parameter
    dtypes: tuple[torch.dtype, ...] = tuple(SCALAR_TYPES)  # the scalar_t it exists for
    # The most registers per thread `nox -s cuda` accepts (see ops.cuda.build_check):
    # a kernel that keeps more loads in flight per thread may declare more.
    max_registers: int = 64

    def name_expression(self, dtype: torch.dtype, head_size: int | None = None) -> str:
        """The instantiation's name as NVRTC and the build check spell it."""
        assert dtype in self.dtypes, (self.name, dtype)
        if self.head_sizes:
            assert head_size in self.head_sizes, (self.name, head_size)
            return f"{self.name}<{SCALAR_TYPES[dtype]}, {head_size}>"
        return f"{self.name}<{SCALAR_TYPES[dtype]}>"

    def name_expressions(self, dtype: torch.dtype) -> list[str]:
        """Every instantiation for `dtype` (none if the kernel lacks that dtype)."""
        if dtype not in self.dtypes:
            return []
        if self.head_sizes:
            return [self.name_expression(dtype, h) for h in self.head_sizes]
        return [self.name_expression(dtype)]


def kernel(
    source: str,
    name: str,
    *args: str,
    head_sizes: tuple[int, ...] = (),
    dtypes: tuple[torch.dtype, ...] = tuple(SCALAR_TYPES),
    max_registers: int = 64,
) -> Kernel:
    """`kernel("norm.cu", "rms_norm", "scalar_t* out", "float eps", ...)`; `dtypes`
    narrows the storage types it is instantiated for (all of SCALAR_TYPES)."""
    parsed = []
    for decl in args:
        ctype, _, arg_name = decl.rpartition(" ")
        parsed.append(Arg(arg_name, ctype))
    return Kernel(source, name, tuple(parsed), head_sizes, dtypes, max_registers)


Value = torch.Tensor | int | float


@dataclass(slots=True)
class Launch:
    kernel: Kernel
    dtype: torch.dtype  # scalar_t
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    values: dict[str, Value] = field(default_factory=dict)
    head_size: int | None = None

    @property
    def name_expression(self) -> str:
        return self.kernel.name_expression(self.dtype, self.head_size)


def _check_tensor(launch: Launch, arg: Arg, value: Value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{launch.kernel.name}: {arg.name} ({arg.ctype}) needs a tensor")
    pointee = arg.pointee
    want = launch.dtype if pointee == "scalar_t" else POINTEE_DTYPES[pointee]
    if value.dtype != want:
        raise TypeError(
            f"{launch.kernel.name}: {arg.name} ({arg.ctype}) must be {want}, got {value.dtype}"
        )
    return value


def build_args(launch: Launch) -> tuple[np.generic, ...]:
    """The kernel's arguments in declaration order, each checked against its C type."""
    names = [a.name for a in launch.kernel.args]
    if set(launch.values) != set(names):
        missing, extra = set(names) - set(launch.values), set(launch.values) - set(names)
        raise TypeError(f"{launch.kernel.name}: missing {sorted(missing)}, extra {sorted(extra)}")
    out: list[np.generic] = []
    device: torch.device | None = None
    for arg in launch.kernel.args:
        value = launch.values[arg.name]
        if arg.is_pointer:
            tensor = _check_tensor(launch, arg, value)
            if device is not None and tensor.device != device:
                raise ValueError(f"{launch.kernel.name}: {arg.name} is on {tensor.device}")
            device = tensor.device
            out.append(POINTER(tensor.data_ptr()))
            continue
        if isinstance(value, torch.Tensor) or (arg.ctype != "float" and isinstance(value, float)):
            raise TypeError(f"{launch.kernel.name}: {arg.name} ({arg.ctype}) got {value!r}")
        scalar_type = VALUE_TYPES[arg.ctype]
        if arg.ctype in INT_RANGES:
            low, high = INT_RANGES[arg.ctype]
            if not low <= int(value) <= high:
                raise OverflowError(f"{launch.kernel.name}: {arg.name}={value} overflows")
        out.append(scalar_type(value))
    return tuple(out)


def threads_for(n: int, cap: int = 1024) -> int:
    """Threads per block for `n` independent elements: whole warps, at most `cap`."""
    return min(cap, max(32, -(-n // 32) * 32))

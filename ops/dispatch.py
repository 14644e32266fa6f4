"""One dispatch point per op: `Op` validates a call once and picks its implementation.

An `Op` holds the op's torch reference (which runs on any device and dtype and
defines the op's semantics) and the kernels registered for it, each an `Impl` of
the same signature belonging to a `Backend` (C on the CPU in `ops.cpu`, CUDA in
`ops.cuda`). A call:

1. runs the op's `validate` (shapes and devices the op needs whatever runs it),
   so every implementation sees checked arguments and none checks them again;
2. takes the op's dispatch tensors (`on`) and their placement, the tuple of
   `(device, dtype)` of each; the kernels whose backend `accepts` that placement
   are looked up in a per-op cache, so a backend's test (all float32 on the CPU
   and the library built; one CUDA device, a kernel dtype and CuPy importable)
   runs once per placement, not once per call;
3. returns the first of those kernels whose `supports` (a per-call test of the
   dispatch tensors' shapes, e.g. attention head sizes) holds, else the reference.

Invariant: every placement's candidates end with an implementation that takes
every call (the torch reference, or a kernel without a `supports` test, after
which nothing is listed), so each call has exactly one implementation, chosen
here and nowhere else. Nothing here imports a backend: backends are plain values
that the op modules pass in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

# Where one dispatch tensor lives: its device and its dtype.
Place = tuple[torch.device, torch.dtype]
# The cache key of a call: device, dtype, device, dtype, ... of its dispatch tensors,
# one flat tuple (built unrolled for up to four tensors: the hot path).
Key = tuple[torch.device | torch.dtype, ...]


def _key_1(ts: tuple[torch.Tensor, ...]) -> Key:
    (a,) = ts
    return (a.device, a.dtype)


def _key_2(ts: tuple[torch.Tensor, ...]) -> Key:
    a, b = ts
    return (a.device, a.dtype, b.device, b.dtype)


def _key_3(ts: tuple[torch.Tensor, ...]) -> Key:
    a, b, c = ts
    return (a.device, a.dtype, b.device, b.dtype, c.device, c.dtype)


def _key_4(ts: tuple[torch.Tensor, ...]) -> Key:
    a, b, c, d = ts
    return (a.device, a.dtype, b.device, b.dtype, c.device, c.dtype, d.device, d.dtype)


def _key_n(ts: tuple[torch.Tensor, ...]) -> Key:
    return tuple(x for t in ts for x in (t.device, t.dtype))


_KEYS = {1: _key_1, 2: _key_2, 3: _key_3, 4: _key_4}


def _places(key: Key) -> tuple[Place, ...]:
    """The (device, dtype) pairs of a key (on a cache miss only)."""
    places = []
    for device, dtype in zip(key[0::2], key[1::2], strict=True):
        assert isinstance(device, torch.device) and isinstance(dtype, torch.dtype)
        places.append((device, dtype))
    return tuple(places)


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    """A family of kernels and the placements it can run on. `accepts` is called
    once per (op, placement) and its answer kept for the life of the process."""

    name: str
    accepts: Callable[[tuple[Place, ...]], bool]

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


TORCH = Backend("torch", lambda places: True)


@dataclass(frozen=True, slots=True, eq=False)
class Impl(Generic[P, R]):
    """One implementation of an op: `fn` has the op's signature; `supports`, if
    given, is called with the op's dispatch tensors and says whether `fn` takes
    this call (a kernel's limits on shapes; placement is the backend's concern)."""

    backend: Backend
    fn: Callable[P, R]
    supports: Callable[..., bool] | None = None


# Every op by name, for tests and tools that want to walk them all.
REGISTRY: dict[str, Op[Any, Any]] = {}


class Op(Generic[P, R]):
    """A public op: call it like the torch reference it wraps (same signature,
    docstring and result); `select` says which implementation a call would run."""

    def __init__(
        self,
        name: str,
        reference: Callable[P, R],
        *,
        on: Callable[P, tuple[torch.Tensor, ...]],
        validate: Callable[P, None] | None = None,
        kernels: Sequence[Impl[P, R]] = (),
    ) -> None:
        functools.update_wrapper(self, reference)  # docstring, signature (__wrapped__)
        self.__name__ = self.__qualname__ = self.name = name
        self.reference = reference
        self.validate = validate
        self.kernels = tuple(kernels)
        self._on = on
        self._key: Callable[[tuple[torch.Tensor, ...]], Key] = self._first_key
        self._torch: Impl[P, R] = Impl(TORCH, reference)
        self._choices: dict[Key, tuple[Impl[P, R], ...]] = {}
        REGISTRY[name] = self

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.validate is not None:
            self.validate(*args, **kwargs)
        tensors = self._on(*args, **kwargs)
        key = self._key(tensors)
        for impl in self._choices.get(key) or self._resolve(key):
            if impl.supports is None or impl.supports(*tensors):
                return impl.fn(*args, **kwargs)
        raise AssertionError("unreachable: the reference takes every call")

    def select(self, *args: P.args, **kwargs: P.kwargs) -> Impl[P, R]:
        """The implementation this call would run (after its validation)."""
        tensors = self._on(*args, **kwargs)
        for impl in self._resolve(self._key(tensors)):
            if impl.supports is None or impl.supports(*tensors):
                return impl
        raise AssertionError("unreachable: the reference takes every call")

    def candidates(self, places: tuple[Place, ...]) -> tuple[Impl[P, R], ...]:
        """The kernels whose backend accepts `places`, in registration order, then
        the reference; cached per placement. The list stops at the first kernel
        without a `supports` test, since it takes every call that reaches it."""
        return self._resolve(tuple(x for place in places for x in place))

    def _resolve(self, key: Key) -> tuple[Impl[P, R], ...]:
        choices = self._choices.get(key)
        if choices is None:
            places = _places(key)
            accepted: list[Impl[P, R]] = []
            for impl in (*self.kernels, self._torch):
                if impl.backend.accepts(places):
                    accepted.append(impl)
                    if impl.supports is None:
                        break
            choices = self._choices[key] = tuple(accepted)
        return choices

    def _first_key(self, tensors: tuple[torch.Tensor, ...]) -> Key:
        """Picks the key builder for this op's number of dispatch tensors."""
        self._key = _KEYS.get(len(tensors), _key_n)
        return self._key(tensors)

    def clear_cache(self) -> None:
        """Forget every placement's candidates (after a backend's availability
        changed, e.g. in tests)."""
        self._choices.clear()


def clear_caches() -> None:
    """`Op.clear_cache` on every op."""
    for op in REGISTRY.values():
        op.clear_cache()

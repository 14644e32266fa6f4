"""glibc malloc settings for CPU inference (owns the one process-wide change).

A forward pass allocates and frees activation tensors of megabytes each, dozens of
times per layer. glibc serves blocks above its mmap threshold with a fresh `mmap`
and returns them with `munmap`, so every such tensor is paid again in page faults;
on a virtual machine those are expensive (a CPU decode step of SmolLM2 at batch 64
spent ~10% of its time there). Raising the mmap threshold and the trim threshold
keeps freed blocks in the heap for reuse: the process holds on to its peak heap
instead of returning it. This is what the usual advice (tcmalloc or jemalloc through
LD_PRELOAD) buys, without a preload. Set `LLMCORE_MALLOC_TUNING=0` to leave malloc
alone; nothing is done on other C libraries.

The price is that a large transient allocation (a request body of tens of
megabytes, decoded and tokenized) would stay in the process for good:
`release_free_memory()` gives the heap's free pages back (glibc's `malloc_trim`),
and the service calls it after such a request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
_TRIM_THRESHOLD = (1 << 31) - 1  # never trim the heap top (the largest int mallopt takes)

_applied: bool | None = None
_libc: ctypes.CDLL | None = None


def tune_malloc() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system (they stay mapped,
    so reusing them costs a page fault each). Blocks for a few milliseconds on a
    large heap; call it off the event loop. True when glibc did it."""
    libc = _glibc()
    if libc is None:
        return False
    try:
        trim = libc.malloc_trim
    except AttributeError:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            return None
    return _libc


def _apply() -> bool:
    if os.environ.get("LLMCORE_MALLOC_TUNING", "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )

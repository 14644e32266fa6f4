"""Compiling the C kernels of `ops/cpu/kernels/` once per machine and loading them.

The sources are package data. The first call compiles them with the machine's C
compiler (`$CC`, else `cc`, `gcc` or `clang`) for its own CPU (`-march=native`)
into one shared library, cached under `$LLMCORE_CACHE_DIR` (default
`$XDG_CACHE_HOME/llmcore`, else `~/.cache/llmcore`) in a file named by a hash of
the sources, the flags, the compiler and the CPU, and loads it with ctypes.
Later processes load the cached file. ctypes releases the GIL during a call.

The library is built with `-fopenmp` and names `libgomp.so.1`; torch has already
loaded its own copy of that library, so the dynamic linker binds ours to it and
the kernels run on torch's OpenMP threads instead of a second, competing pool.
Where `-fopenmp` does not link (clang without LLVM's libomp), the kernels are
built with `-fopenmp-simd` instead: still vectorized, on one thread, with a
warning.

No compiler, a failed build or `LLMCORE_CPU_KERNELS=0` leaves `library()` None:
every op then takes its torch path, which gives the same results.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger("llmcore.ops")

SOURCES = (
    "activation.c", "attention.c", "decode.c", "kv_cache.c", "moe.c", "norm.c", "quant.c",
    "quant_float.c", "quant_k.c", "quant_tiles.c", "rotary.c",
)  # fmt: skip
HEADERS = ("quant.h", "quant_layout.h", "vec.h")
NATIVE = "native"  # the -march of the library every op uses
# No floating-point contraction: the kernels write each fused multiply-add they
# mean, and the others round as torch does (see docs/ops.md).
FLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-std=gnu11", "-shared", "-fPIC")
LIBS = ("-lm",)
THREADED, SINGLE_THREADED = "-fopenmp", "-fopenmp-simd"  # the second if the first fails


def enabled() -> bool:
    return os.environ.get("LLMCORE_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no")


def cache_dir() -> Path:
    explicit = os.environ.get("LLMCORE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmcore"


def compiler() -> str | None:
    """`$CC` if it is set (and found), else the first of cc, gcc, clang on PATH."""
    explicit = os.environ.get("CC", "").strip()
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((name for name in ("cc", "gcc", "clang") if shutil.which(name)), None)


def _sources(compiled: tuple[str, ...] = SOURCES) -> dict[str, str]:
    folder = importlib.resources.files("ops.cpu") / "kernels"
    return {name: (folder / name).read_text(encoding="utf-8") for name in compiled + HEADERS}


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _flags(march: str, defines: tuple[str, ...]) -> tuple[str, ...]:
    return (*FLAGS, f"-march={march}", *(f"-D{name}" for name in defines))


def _library_path(cc: str, sources: dict[str, str], flags: tuple[str, ...]) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256()
    for part in (*sources.values(), " ".join(flags), version, _cpu_signature(), platform.machine()):
        digest.update(part.encode())
        digest.update(b"\0")
    return cache_dir() / f"cpu-kernels-{digest.hexdigest()[:20]}.so"


def build(
    cc: str, march: str = NATIVE, defines: tuple[str, ...] = (), compiled: tuple[str, ...] = SOURCES
) -> Path:
    """Compile the kernels (unless cached) and return the library's path. `march`,
    `defines` (macro names) and `compiled` (a subset of SOURCES) exist for tests, which
    build the quantized matmul's sources for older instruction sets (`x86-64-v3`: the
    AVX2 paths; `x86-64`: the portable C)."""
    sources = _sources(compiled)
    flags = _flags(march, defines)
    target = _library_path(cc, sources, flags)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        files = []
        for name, text in sources.items():
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            if name in compiled:
                files.append(str(path))
        out = Path(tmp) / target.name
        errors = []
        for openmp in (THREADED, SINGLE_THREADED):
            result = subprocess.run(
                [cc, *flags, openmp, "-o", str(out), *files, *LIBS],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode == 0:
                break
            errors.append(f"{cc} {openmp}: {result.stderr.strip()[-1000:]}")
        else:
            raise RuntimeError("; ".join(errors))
        if openmp == SINGLE_THREADED:
            logger.warning(
                "CPU kernels built without OpenMP (%s), so they run on one thread", errors[0]
            )
        os.replace(out, target)  # atomic: a concurrent builder loads one or the other
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, no compiler, or the build failed)."""
    if not enabled():
        return None
    cc = compiler()
    if cc is None:
        logger.warning(
            "no C compiler found (%s): CPU ops take their torch paths",
            f"CC={os.environ['CC']!r}" if os.environ.get("CC") else "cc, gcc, clang",
        )
        return None
    try:
        import torch  # noqa: F401  (its libgomp must be loaded first: see the module doc)

        lib = ctypes.CDLL(str(build(cc)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        logger.warning("CPU kernels unavailable, torch paths used instead: %s", exc)
        return None
    _declare(lib)
    return lib


# The quantized matmul's sources (kernels/quant*.c), which `library_for` builds alone;
# and those of the kernels that write and read the KV cache.
QUANT_SOURCES = tuple(name for name in SOURCES if name.startswith("quant"))
KV_SOURCES = ("attention.c", "kv_cache.c")


@functools.cache
def library_for(
    march: str, defines: tuple[str, ...] = (), compiled: tuple[str, ...] = QUANT_SOURCES
) -> ctypes.CDLL:
    """The quantized matmul (QUANT_SOURCES; or the KV cache's kernels, KV_SOURCES)
    built for another instruction set (`-march=march`, plus `-D` for each of
    `defines`), in a library of its own: for tests, which compare its results with
    the native library's. Raises where the build fails."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler")
    import torch  # noqa: F401  (as in library())

    lib = ctypes.CDLL(str(build(cc, march, defines, compiled)))
    {QUANT_SOURCES: _declare_quant, KV_SOURCES: _declare_kv}[compiled](lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
    fn = lib.llmcore_decode_scratch_floats
    fn.restype = i64
    fn.argtypes = [p, i64]
    fn = lib.llmcore_decode_step
    fn.restype = ctypes.c_int
    fn.argtypes = [p, p, i64, p, p, p, i64, p, p]
    _declare_kv(lib)
    fn = lib.llmcore_rotary_embedding_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [p, p, i64, i64, i32, p, i64, i64, i32, p, i64, i32, i64, i32]
    fn = lib.llmcore_rotary_embedding_and_cache_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [
        p, p, i64, i32, i32, p, i64, p, i64, i32, i32, p, i64, i32, p, p, p, i64, i32, i64, i32
    ]  # fmt: skip
    fn = lib.llmcore_rms_norm_f32
    fn.restype = None
    fn.argtypes = [p, i64, p, f32, p, i64, i64, i64]
    fn = lib.llmcore_fused_add_rms_norm_f32
    fn.restype = None
    fn.argtypes = [p, i64, p, i64, p, f32, p, p, i64, i64]
    for name in ("llmcore_silu_and_mul_f32", "llmcore_gelu_tanh_and_mul_f32"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [p, i64, p, i64, i64]
    fn = lib.llmcore_fused_moe
    fn.restype = ctypes.c_int
    fn.argtypes = [p, i64, p, p, i32, p, p, p, i64, i64, i64, i64, i64, p, p, p]
    _declare_quant(lib)


def _declare_kv(lib: ctypes.CDLL) -> None:
    p, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
    fn = lib.llmcore_paged_attention_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [
        p, i64, i64, p, p, i32, p, i64, p, p, i32, i32, i32, i32, i32, f32, i32, f32, p, i64, i64
    ]  # fmt: skip
    fn = lib.llmcore_reshape_and_cache_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [p, i64, p, i64, p, p, p, i64, i64, i64, i32]


def _declare_quant(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn = lib.llmcore_qmatmul
    fn.restype = ctypes.c_int
    fn.argtypes = [p, p, i64, i64, p, p, i64]
    fn = lib.llmcore_qget_rows
    fn.restype = ctypes.c_int
    fn.argtypes = [p, p, i64, p, i64]
    fn = lib.llmcore_qtype_support
    fn.restype = ctypes.c_int
    fn.argtypes = [i64]
    fn = lib.llmcore_qquantize_act
    fn.restype = ctypes.c_int
    fn.argtypes = [i64, p, i64, p, p, p]
    lib.llmcore_qisa.restype = ctypes.c_char_p
    lib.llmcore_qisa.argtypes = []

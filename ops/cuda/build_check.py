"""`nox -s cuda`: compile every kernel instantiation with nvcc and check its resources.

Builds one translation unit that includes every `.cu` file and takes the address
of every name expression in `ALL_KERNELS` (the instantiations the runtime
compiles), compiles it for each target architecture with `-Xptxas -v` (one nvcc
per architecture, in parallel), parses ptxas's report and prints a table per
kernel and architecture. Fails on any local memory (spill stores, spill loads,
or a stack frame) and on more than `REGISTER_CAP` registers per thread: at 64 an
SM's 65,536 registers hold 1,024 threads, half of the 2,048 an sm_80/sm_90 SM can
keep resident, so no kernel is held below 50% occupancy by its registers. A kernel
that trades occupancy for more loads in flight per thread declares its own cap
(`Kernel.max_registers`, with its reason beside the declaration).

Needs nvcc only (not CuPy, not a GPU): `python -m ops.cuda.build_check`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ops.cuda._kernels import ALL_KERNELS, COMPILE_OPTIONS
from ops.cuda._launch import SCALAR_TYPES

ARCHITECTURES = ("sm_80", "sm_90")
REGISTER_CAP = 64
KERNELS_DIR = Path(__file__).resolve().parent / "kernels"
_THREADS_PER_SM = 2048
_REGISTERS_PER_SM = 65536

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


@dataclass(slots=True)
class KernelResources:
    name: str
    arch: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0

    @property
    def occupancy(self) -> float:
        """The fraction of an SM's threads its registers allow (allocated per warp
        in units of 256; whole-block rounding and shared memory not counted)."""
        per_warp = -(-self.registers * 32 // 256) * 256
        warps = min(_THREADS_PER_SM // 32, _REGISTERS_PER_SM // max(per_warp, 1))
        return warps * 32 / _THREADS_PER_SM

    def problems(self, cap: int = REGISTER_CAP) -> list[str]:
        found = []
        if self.spill_stores or self.spill_loads or self.stack:
            found.append(f"{self.name} ({self.arch}) uses local memory")
        if self.registers > cap:
            found.append(f"{self.name} ({self.arch}) uses {self.registers} > {cap} registers")
        return found


def find_nvcc() -> str | None:
    """nvcc on PATH, under $CUDA_HOME/$CUDA_PATH, or in /usr/local/cuda*."""
    candidates = [shutil.which("nvcc")]
    candidates += [
        os.path.join(os.environ[v], "bin", "nvcc")
        for v in ("CUDA_HOME", "CUDA_PATH")
        if v in os.environ
    ]
    candidates += [
        "/usr/local/cuda/bin/nvcc",
        *sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def instantiation_source() -> str:
    """One translation unit instantiating every kernel the runtime can launch."""
    sources = sorted({k.source for k in ALL_KERNELS})
    lines = [f'#include "{KERNELS_DIR / s}"' for s in sources]
    lines.append("void* llmcore_instances[] = {")
    for k in ALL_KERNELS:
        for dtype in SCALAR_TYPES:
            lines.extend(f"    (void*)&{expr}," for expr in k.name_expressions(dtype))
    lines.append("};")
    return "\n".join(lines) + "\n"


def compile_report(nvcc: str, source: Path, arch: str) -> str:
    """ptxas's verbose report for one architecture (raises on a compile error)."""
    out = source.with_suffix(f".{arch}.o")
    cmd = [nvcc, *COMPILE_OPTIONS, "-O3", f"-I{KERNELS_DIR}", "-c", str(source), "-o", str(out)]
    cmd += [f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xptxas", "-v"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"nvcc failed for {arch}:\n{done.stderr}")
    return done.stderr


def parse_report(report: str) -> list[KernelResources]:
    kernels: list[KernelResources] = []
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            kernels.append(KernelResources(m.group(1), m.group(2)))
        elif kernels and (m := _FRAME.search(line)):
            k = kernels[-1]
            k.stack, k.spill_stores, k.spill_loads = (int(g) for g in m.groups())
        elif kernels and (m := _USED.search(line)):
            kernels[-1].registers = int(m.group(1))
            kernels[-1].smem = int(m.group(2) or 0)
    return kernels


def demangle(nvcc: str, kernels: list[KernelResources]) -> None:
    """Replace mangled names by `name<args>` through cu++filt (or c++filt: the
    mangling is Itanium's), when one is there."""
    cufilt = Path(nvcc).resolve().with_name("cu++filt")
    tool = str(cufilt) if cufilt.exists() else shutil.which("c++filt")
    if tool is None or not kernels:
        return
    names = "\n".join(k.name for k in kernels)
    done = subprocess.run([tool], input=names, capture_output=True, text=True, check=True)
    for k, pretty in zip(kernels, done.stdout.splitlines(), strict=True):
        k.name = re.sub(r"^void |\(.*$", "", pretty).replace("(int)", "")


def table(kernels: list[KernelResources]) -> str:
    """One row per instantiation, registers per architecture; occupancy is the
    worse of the two, local memory the sum."""
    by_name: dict[str, dict[str, KernelResources]] = {}
    for k in kernels:
        by_name.setdefault(k.name, {})[k.arch] = k
    head = " | ".join(f"regs {a}" for a in ARCHITECTURES)
    rows = [f"| kernel | {head} | occupancy (regs) | smem B | stack B | spill st/ld B |"]
    rows.append("|---|" + "---:|" * (len(ARCHITECTURES) + 4))
    for name in sorted(by_name):
        arch = by_name[name]
        built = list(arch.values())
        regs = " | ".join(str(arch[a].registers) if a in arch else "-" for a in ARCHITECTURES)
        stores, loads = sum(k.spill_stores for k in built), sum(k.spill_loads for k in built)
        rows.append(
            f"| `{name}` | {regs} | {min(k.occupancy for k in built):.0%} | "
            f"{max(k.smem for k in built)} | {sum(k.stack for k in built)} | {stores}/{loads} |"
        )
    return "\n".join(rows)


def check(nvcc: str) -> tuple[list[KernelResources], list[str]]:
    """Compile for every architecture; the resources and every problem found."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "llmcore_instances.cu"
        source.write_text(instantiation_source(), encoding="utf-8")
        with ThreadPoolExecutor(len(ARCHITECTURES)) as pool:
            reports = list(pool.map(lambda a: compile_report(nvcc, source, a), ARCHITECTURES))
    kernels = [k for r in reports for k in parse_report(r)]
    demangle(nvcc, kernels)
    caps = {
        e: k.max_registers for k in ALL_KERNELS for d in SCALAR_TYPES for e in k.name_expressions(d)
    }
    problems = [p for k in kernels for p in k.problems(caps.get(k.name, REGISTER_CAP))]
    expected = set(caps)
    for arch in ARCHITECTURES:
        built = {k.name for k in kernels if k.arch == arch}
        if built != expected:
            problems.append(f"{arch}: built {sorted(built ^ expected)} differently than expected")
    return kernels, problems


def main() -> int:
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda*)", file=sys.stderr)
        return 1
    kernels, problems = check(nvcc)
    print(table(kernels))
    print(
        f"\n{len(kernels)} kernel builds; register cap {REGISTER_CAP} unless declared;"
        " no local memory allowed"
    )
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

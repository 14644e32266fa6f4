"""The build check behind `nox -s cuda`, without nvcc: it instantiates every kernel
the runtime can launch, reads ptxas's report, and fails on local memory or on
registers above the cap. (The compile itself runs in `nox -s cuda`.)"""

from __future__ import annotations

from ops.cuda import build_check
from ops.cuda._kernels import ALL_KERNELS
from ops.cuda._launch import SCALAR_TYPES

REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z8rms_normI6__halfEvPT_PKS1_S4_fix' for 'sm_80'
ptxas info    : Function properties for _Z8rms_normI6__halfEvPT_PKS1_S4_fix
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 21 registers, used 1 barriers, 128 bytes smem, 392 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3bigv' for 'sm_90'
ptxas info    : Function properties for _Z3bigv
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 0 barriers, 380 bytes cmem[0]
"""


def test_report_is_parsed_and_problems_found() -> None:
    small, big = build_check.parse_report(REPORT)
    assert (small.arch, small.registers, small.smem, small.stack) == ("sm_80", 21, 128, 0)
    assert small.occupancy == 1.0 and not small.problems()
    assert (big.arch, big.registers, big.stack) == ("sm_90", 96, 16)
    assert (big.spill_stores, big.spill_loads) == (8, 4)
    assert len(big.problems()) == 2  # local memory, and 96 > 64 registers
    assert big.occupancy == 21 * 32 / 2048  # 96 regs * 32 lanes = 3072 a warp: 21 warps
    assert "| `_Z3bigv` | - | 96 | 33% | 0 | 16 | 8/4 |" in build_check.table([small, big])


def test_instantiations_cover_every_kernel_dtype_and_head_size() -> None:
    source = build_check.instantiation_source()
    for kernel in ALL_KERNELS:
        assert f'kernels/{kernel.source}"' in source
        for dtype in SCALAR_TYPES:
            for expr in kernel.name_expressions(dtype):
                assert f"(void*)&{expr}," in source
    # 42 + tensor-core prefill (8) + fused rotary/cache (3) + head size 256 (decode, prefill: 6)
    assert source.count("(void*)&") == 59

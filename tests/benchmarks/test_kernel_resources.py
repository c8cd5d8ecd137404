"""benchmarks/kernel_resources.py compiles kiln's GEMM kernels for sm_90 on a machine without a GPU
(in a subprocess: these tests run Triton interpreted)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="this Triton ships no ptxas")


def _output(cases: str, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_resources.py"), "--cases", cases, *flags],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _run(cases: str) -> dict[str, tuple[int, int, int]]:
    out = _output(cases)
    rows = re.findall(r"^(.+?)\s+regs\s+(\d+)\s+spill\s+(\d+) B\s+stack\s+(\d+) B\s+instructions\s+(\d+)$",
                      out, re.M)
    return {name.strip(): (int(r), int(i), int(st) + int(sp)) for name, r, sp, st, i in rows}


def test_int8_ffn1_compiles_and_zero_points_of_0_cost_nothing() -> None:
    rows = _run("bias + GELU, int8 out")
    plain, zeros = rows["int8 FFN1, bias + GELU, int8 out"], rows["int8 FFN1, bias + GELU, int8 out, zero points of 0"]
    assert 0 < plain[0] <= 255 and plain[1] > 100
    assert zeros == plain   # the launcher drops all-zero zero points: the same kernel


def test_folded_stem_compiles_without_spills() -> None:
    """The S2D walk's stem (kernels/triton/qconv_s2d.py), int8 and fp8, builds for sm_90 and keeps
    its accumulators in registers."""
    rows = _run("folded space to depth")
    assert set(rows) == {"int8 stem, folded space to depth (S2D)", "fp8 stem, folded space to depth (S2D)"}
    for regs, instructions, stack in rows.values():
        assert 0 < regs <= 255 and instructions > 100 and stack == 0


def test_window_walk_with_a_zero_point_and_mid_quantization_compiles() -> None:
    """The TMA walk over a uint8 X with its zero point and the mid quantization (ONNX Runtime's QDQ
    residual block, a 1x1 conv) builds for sm_90 within the register file."""
    rows = _run("WINDOW walk")
    regs, instructions, _stack = rows["uint8 X (zero point) conv 1x1, int8 residual + mid, WINDOW walk"]
    assert 0 < regs <= 255 and instructions > 1000


def test_operands_report_where_the_mma_reads_a() -> None:
    """--operands: a 1x1 conv over a flat row of pixels (a box of one row) feeds its MMA from shared
    memory, as TMA wrote it; the report names the count of each kind, and the MMA waits' depths."""
    out = _output("flat rows, WINDOW walk", "--operands")
    assert re.search(r"1 warp_group_dot: A from shared memory 1, from registers 0; local_load 0,", out), out
    # and what the K loop's waits leave in flight, read from the SASS (at least the wait after the loop)
    assert re.search(r"MMA groups left in flight by each wait \(SASS\): \d+ x\d+", out), out


def test_mma_operands_parses_ttgir() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.kernel_resources import mma_operands

    ttgir = """
    %a = ttg.local_load %s : !ttg.memdesc<2x64x64xi8, #shared> -> tensor<2x64x64xi8, #linear>
    %r = tt.reshape %a : tensor<2x64x64xi8, #linear> -> tensor<128x64xi8, #linear1>
    %c = ttg.convert_layout %r : tensor<128x64xi8, #linear1> -> tensor<128x64xi8, #ttg.dot_op<{opIdx = 0}>>
    %d = ttng.warp_group_dot %c, %b, %acc {inputPrecision = 0 : i32} : tensor<128x64xi8, #ttg.dot_op<{opIdx = 0}>> * !ttg.memdesc<64x128xi8> -> tensor<128x128xi32, #mma>
    %e = ttng.warp_group_dot %m, %b, %d {inputPrecision = 0 : i32} : !ttg.memdesc<128x64xi8, #shared> * !ttg.memdesc<64x128xi8> -> tensor<128x128xi32, #mma>
    """
    assert mma_operands(ttgir) == ("2 warp_group_dot: A from shared memory 1, from registers 1; local_load 1, "
                                   "convert_layout 1, reshape 1")

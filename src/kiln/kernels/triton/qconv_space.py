"""The tuning spaces of the Triton implicit-GEMM kiln::QConv (qconv.py): plain data, read by
the kernel's launcher and the tactics (tactics/quantized_conv.py).

Config keys: the tile (BLOCK_M pixels x BLOCK_N output channels x BLOCK_K, the depth of a K
step), GROUP_M (tile order), warps and pipeline stages; fp8 also FP8_ACC (how often the
accumulator is promoted: qconv.py's docstring, Accumulation); MULTI_ROW 1 lets the ROWS walk
take several kernel rows per step (qconv_plan.k_loop).
"""
from __future__ import annotations

from typing import Any

_TILE = {"GROUP_M": 8}
# The tuning spaces. Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K bytes (8-bit
# operands): 128x256x128 at 3 stages is 144 KiB of the 227 KiB an H100/H200 block may have.
# Narrow tiles (BLOCK_N 64) are for the 64-channel layers of ResNet's first stage.
INT8_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4},
)
# fp8: configs with FP8_ACC > 0 keep a second float32 accumulator, so they stay at 64 float32
# registers per thread per accumulator (128x128 over 8 warps, 128x64 over 4). The first config
# is the default when tuning is off: promoted once per K step.
FP8_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 32},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 32},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    # int8's other tilings (64x128x128 was int8's fastest for 20 of ResNet-50's convs on the
    # H200, 2026-11-27, where fp8 had only 128x64x128 at that size)
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 0},
)

# The ROWS tactics (C not a multiple of 32: ResNet's stem) with several kernel rows per step
# (MULTI_ROW, k_loop): BLOCK_K is the depth of a step, 256 = the stem's 7 rows of 32 at once,
# 128 = four rows, 64 = two. Narrow tiles: a stem has 64 output channels. Registers (sm_90,
# the stem, benchmarks/kernel_resources.py): 96-171, no spills; a 256-deep step over 4 warps
# at 128x64 took all 255, so that tile has 8 warps.
_ROWS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 256, **_TILE, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 256, **_TILE, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 2},
)
ROWS_CONFIGS: tuple[dict[str, Any], ...] = tuple({**c, "MULTI_ROW": 1} for c in _ROWS)
ROWS_FP8_CONFIGS: tuple[dict[str, Any], ...] = tuple({**c, "MULTI_ROW": 1, "FP8_ACC": 0} for c in _ROWS)

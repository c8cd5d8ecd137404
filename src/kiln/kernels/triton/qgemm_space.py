"""The tuning spaces of the 8-bit GEMM (kernels/triton/qgemm.py) and how an fp8 dot promotes
its accumulator: plain data and arithmetic, shared with the implicit-GEMM convolution
(qconv.py, qconv_plan.py) and read by the tactics (tactics/quantized.py)."""
from __future__ import annotations

from typing import Any

# 8-bit tensor-core dots (mma/wgmma) take K in steps of 32: a smaller BLOCK_K does not compile
# on the GPU ("K >= 32"), though the interpreter would run it.
MIN_BLOCK_K = 32

# The tuning spaces (Hopper, 8-bit operands): a stage holds (BLOCK_M + BLOCK_N) * BLOCK_K bytes,
# so 128x256x128 at 3 stages is 144 KiB of the 227 KiB a block may have. BLOCK_K = 128 is one
# 128-byte swizzle row of 8-bit K; the 64-deep tiles are for short K (ResNet's 1x1 convs: 64).
# TMA=1 uses qgemm_tma.py's kernel (where it does not apply, the same tiles through
# plain loads). On the H200 (benchmarks/kernels_qgemm.py --all, 2026-11-27) the two TMA tilings here were
# the fastest fp8 config on BERT's FFN1 and the fastest int8 one on FFN2 (6% over plain
# loads); three other TMA tilings never won and were dropped.
# PERSISTENT=1: the TMA kernel with one program per SM walking the tiles, pipelined across them
# (qgemm_tma.py): the next tile's loads overlap this tile's epilogue. Without
# TMA (zero points, misaligned K) the same tiles run through plain loads, one per program.
# Registers at these tilings, sm_90, no spills (benchmarks/kernel_resources.py); their GPU times
# on BERT's shapes: benchmarks/kernels_gemm_store.py (BENCHMARKS.md, 20:50-21:25 UTC).
# Y_TMA=1: the epilogue's tile leaves through one TMA box (qgemm_tma.py), where it fits in shared
# memory beside the stages. `python benchmarks/kernels_gemm_store.py` (H200, 2026-11-27) on BERT's
# shapes: 1.00x-1.16x on the 128x128x64 w4 and 128x256x128 tilings, fp8 and int8 (the one case
# below 1, fp8 FFN2 on 128x256x128, 23.3 -> 23.4 us, within run-to-run noise),
# mixed on the 128x128x128 w8 one (0.89x-1.01x), which keeps the pointer store.
PERSISTENT_TILES: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "Y_TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "Y_TMA": 1},
)
# Two persistent programs per SM (SM_PROGRAMS=2, qgemm_tma.persistent_programs): tiles over one
# warpgroup whose stages and TMA staging take at most half an SM's shared memory, so that one
# program's epilogue runs beside the other's MMAs. On BERT-base b32's FFN1 (bias, exact Gelu,
# 8-bit codes; `benchmarks/kernels_overlap.py`, H200, 2026-11-29): int8 27.9 us against 33.6 for
# the best one-per-SM tiling (55.2 -> 29.7-29.9 for 128x128x64), fp8 25.7 against 26.7; the Gelu
# still costs ~7 us of fp8's 25.7 (the two programs run their MMAs and epilogues mostly in step:
# holding the second one back 0.5-3 us at the start made it slower, 26.0-32.4 us). Inside the
# engine the difference is larger than alone: BERT-base b32 fp8 (per-tensor weight scales) ran
# in 1.1906 ms with these tiles in the space against 1.2616 without (`benchmarks/space_ablation.py`,
# same machine, the tuner picked 128x128x128 for all 12 FFN1s). FAST_GELU=1 (fp8 outputs only,
# activation.fast_gelu_code): the Gelu in its tanh form on the hardware tanh; FFN1 25.1 -> 21.8 us.
SHARED_SM_TILES: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "Y_TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 3, "Y_TMA": 1},
)
INT8_CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 5, "TMA": 1},
    *({**c, "PERSISTENT": 1} for c in PERSISTENT_TILES),
    *({**c, "PERSISTENT": 1, "SM_PROGRAMS": 2} for c in SHARED_SM_TILES),
)
# fp8 also takes FP8_ACC, how often the accumulator is promoted (module docstring of qgemm.py,
# dot8), default BLOCK_K; 0 lets the MMA accumulate throughout (what cuBLASLt's fast
# accumulation does), which the tuner keeps only where the output meets the tolerance. (Before
# dot8, FP8_ACC 0 was passed to tl.dot as max_num_imprecise_acc=0, which promotes after every
# wgmma instruction: that mode measured 1.5x-2x slower than BLOCK_K on the H200 and is gone.)
# The first config is the default when tuning is off. 64x128 and 128x128x64 tiles are the
# fastest with a GELU + requantizing epilogue (BERT's FFN1), the wide ones without.
FP8_CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 128,
     "TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 64},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 5, "FP8_ACC": 64,
     "TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0,
     "TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0},
    *({**c, "FP8_ACC": 0, "PERSISTENT": 1} for c in PERSISTENT_TILES),
    *({**c, "FP8_ACC": 0, "PERSISTENT": 1, "SM_PROGRAMS": 2} for c in SHARED_SM_TILES),
    *({**c, "FP8_ACC": 0, "PERSISTENT": 1, "SM_PROGRAMS": 2, "FAST_GELU": 1} for c in SHARED_SM_TILES),
)
# Both spaces, for callers that time every config of either input type.
CONFIGS: tuple[dict[str, int], ...] = INT8_CONFIGS + FP8_CONFIGS


def fp8_promotion(cfg: dict[str, Any], block_k: int | None = None) -> int:
    """Products per partial sum of an fp8 dot (config key FP8_ACC, default the dot's K; 0: the
    MMA accumulates throughout). tl.dot takes at most its own K: `block_k` where the kernel's
    K step is not the config's BLOCK_K (the convolution's walk may take a shorter one)."""
    k = int(cfg["BLOCK_K"] if block_k is None else block_k)
    acc = int(cfg.get("FP8_ACC", k))
    return min(acc, k) if acc > 0 else 0


def describe(cfg: dict[str, Any]) -> str:
    """A config as the reports print it: "128x128x64 w4 s4 FP8_ACC=0 TMA=1"."""
    keys = ("FP8_ACC", "TMA", "PERSISTENT", "SM_PROGRAMS", "FAST_GELU", "Y_TMA", "S2D", "IMAGES")
    flags = "".join(f" {k}={cfg[k]}" for k in keys if k in cfg)
    return (f"{cfg.get('BLOCK_M')}x{cfg.get('BLOCK_N')}x{cfg.get('BLOCK_K')} w{cfg.get('num_warps')} "
            f"s{cfg.get('num_stages')}{flags}")

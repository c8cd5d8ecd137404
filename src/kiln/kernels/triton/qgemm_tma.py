"""The 8-bit GEMM with operands brought in by the tensor memory accelerator (config TMA=1 or
PERSISTENT=1; qgemm.qmatmul launches it where tma_ok): int8 (a zero point on A only) or float8,
K-contiguous 16-byte-aligned operands. One tile per program, or one program per SM walking the
tiles (PERSISTENT). The per-tile work is qgemm_tile.py's, the arithmetic qgemm.py's docstring."""
from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.gemm import grouped_tile
from kiln.kernels.triton.qgemm_tile import dot8, epilogue, epilogue_value
from kiln.kernels.triton.pdl import wait_for_inputs

Tensor = torch.Tensor
FLOAT8 = torch.float8_e4m3fn
SHARED_MEMORY = 227 * 1024 - 1024   # a Hopper block's shared memory, less room for barriers


@triton.jit
def _tma_tile(a_desc, b_desc, tile, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, M, N, K,
              stride_ym, stride_bs, stride_bias, stride_os, p0, p1, MS, MSI, MZP, TABLE,
              FP8: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
              REQUANT: tl.constexpr, OUT_FP8: tl.constexpr, HAS_OUT_ZP: tl.constexpr, OUT_PER_COL: tl.constexpr,
              QMIN: tl.constexpr, QMAX: tl.constexpr, FP8_ACC: tl.constexpr, Y_TMA: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
              MID: tl.constexpr, HAS_MZP: tl.constexpr, MQMIN: tl.constexpr, MQMAX: tl.constexpr,
              A_ZP, COLSUM, HAS_AZP: tl.constexpr, HAS_TABLE: tl.constexpr):
    """One output tile from TMA-loaded A [M, K] and B [N, K] tiles (out-of-range rows and K read
    as 0): the K walk, then the epilogue; with Y_TMA, Y and RES are descriptors of [BLOCK_M,
    BLOCK_N] boxes and the tile goes out as one TMA store (the copy engine drops what lies past
    M and N), the residual comes in as one TMA load: no per-element addresses or masks, and
    full-width transactions where the MMA layout would store 2 or 4 bytes a thread at a time."""
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([off_m, k * BLOCK_K])                                 # [BLOCK_M, BLOCK_K]
        b = b_desc.load([off_n, k * BLOCK_K])                                 # [BLOCK_N, BLOCK_K]
        acc = dot8(a, b.T, acc, FP8_ACC)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    if HAS_AZP:   # int8 A's zero point: - za * colsum(B)[n] (qgemm.py's docstring)
        acc -= tl.load(A_ZP).to(tl.int32) * tl.load(COLSUM + offs_n % N)[None, :]
    if Y_TMA:
        res = 0.0
        if HAS_RES:
            res = RES.load([off_m, off_n])
        v = epilogue_value(acc, offs_n % N, res, A_SCALE, B_SCALE, BIAS, OUT_SCALE, OUT_ZP, stride_bs, stride_bias,
                           stride_os, p0, p1, HAS_BIAS, HAS_RES, ACT, REQUANT, OUT_FP8, HAS_OUT_ZP, OUT_PER_COL,
                           QMIN, QMAX, MS, MSI, MZP, MID, HAS_MZP, MQMIN, MQMAX, TABLE, HAS_TABLE)
        Y.store([off_m, off_n], v.to(Y.dtype))
    else:
        offs_m = off_m + tl.arange(0, BLOCK_M)
        epilogue(acc, offs_m, offs_n, offs_n % N, M, N, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP,
                 stride_ym, stride_bs, stride_bias, stride_os, p0, p1, HAS_BIAS, HAS_RES, ACT, REQUANT, OUT_FP8,
                 HAS_OUT_ZP, OUT_PER_COL, QMIN, QMAX, MS, MSI, MZP, MID, HAS_MZP, MQMIN, MQMAX, TABLE, HAS_TABLE)


@triton.jit
def qgemm_tma_kernel(
        a_desc, b_desc, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, M, N, K, programs,
        stride_ym, stride_bs, stride_bias, stride_os, p0, p1, MS, MSI, MZP, TABLE,
        FP8: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
        REQUANT: tl.constexpr, OUT_FP8: tl.constexpr, HAS_OUT_ZP: tl.constexpr, OUT_PER_COL: tl.constexpr,
        QMIN: tl.constexpr, QMAX: tl.constexpr, FP8_ACC: tl.constexpr, PERSISTENT: tl.constexpr, Y_TMA: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        MID: tl.constexpr, HAS_MZP: tl.constexpr, MQMIN: tl.constexpr, MQMAX: tl.constexpr,
        A_ZP, COLSUM, HAS_AZP: tl.constexpr, HAS_TABLE: tl.constexpr, PDL: tl.constexpr = False):
    """The same GEMM with TMA descriptors (_tma_tile), int8 (A's zero point, if any, corrected by
    the weight's column sums: HAS_AZP) or float8: one tile
    per program, or PERSISTENT: `programs` programs (one per SM) take tiles i, i + programs, ...,
    the loop nest flattened so that Triton pipelines across tiles: the next tile's first loads
    are in flight while this tile's epilogue runs, an overlap one tile per program lacks. (One
    loop for both shapes costs the one-tile kernel registers: 255 and a stack frame against 197,
    benchmarks/kernel_resources.py.)"""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    if PERSISTENT:
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
            _tma_tile(a_desc, b_desc, tile, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, M, N, K,
                      stride_ym, stride_bs, stride_bias, stride_os, p0, p1, MS, MSI, MZP, TABLE, FP8, HAS_BIAS,
                      HAS_RES, ACT,
                      REQUANT, OUT_FP8, HAS_OUT_ZP, OUT_PER_COL, QMIN, QMAX, FP8_ACC, Y_TMA, BLOCK_M, BLOCK_N,
                      BLOCK_K, GROUP_M, MID, HAS_MZP, MQMIN, MQMAX, A_ZP, COLSUM, HAS_AZP, HAS_TABLE)
    else:
        _tma_tile(a_desc, b_desc, tl.program_id(0), A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, M, N, K,
                  stride_ym, stride_bs, stride_bias, stride_os, p0, p1, MS, MSI, MZP, TABLE, FP8, HAS_BIAS,
                  HAS_RES, ACT,
                  REQUANT, OUT_FP8, HAS_OUT_ZP, OUT_PER_COL, QMIN, QMAX, FP8_ACC, Y_TMA, BLOCK_M, BLOCK_N,
                  BLOCK_K, GROUP_M, MID, HAS_MZP, MQMIN, MQMAX, A_ZP, COLSUM, HAS_AZP, HAS_TABLE)


def descriptor_type():  # noqa: ANN202
    """Triton's host-side TMA descriptor class, or None where this Triton has none (before 3.4)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`: the persistent grid's size (4 off the GPU, where the
    interpreter runs programs one after another anyway)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def persistent_programs(tiles: int, device: torch.device, cfg: dict) -> int:
    """A persistent kernel's grid: SM_PROGRAMS programs per SM (config key, default 1), never more
    than the tiles. Two per SM, where a program's registers and shared memory leave room for a
    second, let one program's epilogue (ALU work: scales, Gelu, the 8-bit conversion) run on the
    SM while the other's MMAs do, which one program per SM runs one after the other."""
    return min(tiles, sm_count(device) * int(cfg.get("SM_PROGRAMS", 1)))


def tma_ok(a2: Tensor, w: Tensor, a_zp: Tensor | None, b_zp: Tensor | None) -> bool:
    """TMA applies: int8 x int8 (A may have a zero point, B none) or fp8 x fp8, both K-contiguous,
    16-byte aligned rows and bases (K a multiple of 16)."""
    same = (a2.dtype == w.dtype == torch.int8) or (a2.dtype == w.dtype == FLOAT8 and a_zp is None)
    return (same and b_zp is None and a2.is_contiguous() and w.is_contiguous()
            and a2.shape[1] % 16 == 0 and a2.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0
            and descriptor_type() is not None)


def store_boxes(cfg: dict, operand_bytes: int, y: Tensor, res: Tensor, has_res: bool,
                extra_bytes: int = 0) -> tuple[Any, Any, bool]:
    """(Y, RES) as a persistent GEMM kernel takes them, and whether they are TMA descriptors of
    [BLOCK_M, BLOCK_N] boxes (config Y_TMA, where store_tma_ok, with extra_bytes of other shared
    memory the kernel needs) or the tensors themselves. Without a residual, RES is a placeholder:
    Y again (its descriptor, not a second one)."""
    tiles = (y, res) if has_res else (y,)
    if not (cfg.get("Y_TMA") and store_tma_ok(cfg, operand_bytes, *tiles, extra_bytes=extra_bytes)):
        return y, res, False
    desc, box = descriptor_type(), [cfg["BLOCK_M"], cfg["BLOCK_N"]]
    y_desc = desc.from_tensor(y, box)
    return y_desc, desc.from_tensor(res, box) if has_res else y_desc, True


def store_tma_ok(cfg: dict, operand_bytes: int, *tiles: Tensor, extra_bytes: int = 0) -> bool:
    """The output (and the residual, read the same way) can go through TMA boxes (config Y_TMA):
    row-major 2-D, rows and base 16-byte aligned, and their [BLOCK_M, BLOCK_N] staging buffers fit
    in shared memory beside the operand stages and extra_bytes of other use (128x256x128 at 3
    stages with a 16-bit Y and residual needs 272 KiB). Elsewhere the epilogue stores through
    pointers."""
    smem = staged_bytes(cfg, operand_bytes, *(t.element_size() for t in tiles)) + extra_bytes
    return smem <= SHARED_MEMORY and all(t.dim() == 2 and t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0
                                         and t.data_ptr() % 16 == 0 for t in tiles)


def staged_bytes(cfg: dict, operand_bytes: int, *box_bytes: int) -> int:
    """Shared memory of a config's operand stages and of one [BLOCK_M, BLOCK_N] staging box per
    entry of box_bytes (its element size): what store_tma_ok fits in a block, and what two
    programs per SM (SM_PROGRAMS=2) must fit in half of one."""
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    return cfg["num_stages"] * (bm + bn) * cfg["BLOCK_K"] * operand_bytes + sum(bm * bn * b for b in box_bytes)

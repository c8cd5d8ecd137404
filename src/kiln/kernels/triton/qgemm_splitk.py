"""Split-K for the 8-bit GEMM (qgemm.py's arithmetic and epilogue): for a layer with few output
tiles and a long K, as a classifier over a batch has (ResNet-50's FC, [64, 2048] x [2048, 1000]:
16 tiles of 64 x 64 for 132 SMs, each walking K in 16 steps: 8.8 us on an H200, 2026-11-29,
BENCHMARKS.md), SPLIT_K programs per tile each sum a contiguous share of K's steps into a partial
tile P[s] (int32 for int8 operands, float32 for float8: [SPLIT_K, M, N] in a workspace), and a
second kernel sums a tile's SPLIT_K partials in order and runs the epilogue (qgemm_tile.py).

int8: exactly the one-pass sum (integer addition in any order). float8: each share is summed in
float32 as one pass sums it (dot8, FP8_ACC), the shares then added in order, so the rounding
differs from one pass's: within the quantized tolerance, which the tuner checks per config.
Symmetric operands only: int8 or float8 A and B without zero points (all-zero ones are
dropped, as qgemm.py drops them); uint8, zero points, mid quantization and code tables stay
with the one-pass kernels. Rows and columns past M and N are read wrapped, as qgemm.py's.
On an H200 (2026-11-29) the tuner picks it for the int8 FC (SPLIT_K 4: 7.8 us, from 8.8); for the
float8 FC the one-pass kernel stays faster (7.9 us).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.activation import activation_code
from kiln.kernels.triton.gemm import grouped_tile
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs
from kiln.kernels.triton.qgemm import FP8, MAX_K, _check, _per_channel, output_dtype
from kiln.kernels.triton.qgemm_space import MIN_BLOCK_K, fp8_promotion
from kiln.kernels.triton.qgemm_tile import dot8, epilogue
from kiln.kernels.triton.quantize import OUT_TYPES, needed_zero_point, reciprocal_of

Tensor = torch.Tensor

_TILE = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 4}
INT8_CONFIGS: tuple[dict[str, Any], ...] = (
    {**_TILE, "SPLIT_K": 4}, {**_TILE, "SPLIT_K": 8},
    {**_TILE, "BLOCK_N": 128, "SPLIT_K": 8}, {**_TILE, "BLOCK_K": 64, "SPLIT_K": 8},
)
FP8_CONFIGS: tuple[dict[str, Any], ...] = tuple({**c, "FP8_ACC": acc} for c in INT8_CONFIGS for acc in (0, 128))
# Where the tactics offer it (tactics/quantized.py): tiles of 64 x 64 at most this many, K at least.
MAX_TILES = 64
MIN_K = 1024


@triton.jit
def _partial_kernel(A, B, P, M, N, K, stride_am, stride_bn, steps, FP8: tl.constexpr, EVEN_K: tl.constexpr,
                    FP8_ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr = False):
    """Program (tile, s): the sum over K steps [s * steps, (s + 1) * steps) of the tile, into P[s]."""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    tile = tl.program_id(0) // SPLIT_K
    s = tl.program_id(0) % SPLIT_K
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    first = s * steps
    last = tl.minimum(first + steps, tl.cdiv(K, BLOCK_K))
    a_ptrs = A + (offs_m % M)[:, None] * stride_am + (first * BLOCK_K + offs_k)[None, :]
    b_ptrs = B + (first * BLOCK_K + offs_k)[:, None] + (offs_n % N)[None, :] * stride_bn   # B [N, K], K-major
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(first, last):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = dot8(a, b, acc, FP8_ACC)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(P + s.to(tl.int64) * M * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def _finish_kernel(P, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, M, N, stride_bs, stride_bias, stride_os,
                   p0, p1, FP8: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
                   REQUANT: tl.constexpr, OUT_FP8: tl.constexpr, OUT_PER_COL: tl.constexpr, QMIN: tl.constexpr,
                   QMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
                   PDL: tl.constexpr = False):
    """Program per tile: P[0] + P[1] + ... + P[SPLIT_K - 1], then qgemm_tile's epilogue into Y."""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    tiles_n = tl.cdiv(N, BLOCK_N)
    offs_m = (tl.program_id(0) // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tl.program_id(0) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    ptrs = P + offs_m[:, None] * N + offs_n[None, :]
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for s in range(SPLIT_K):                         # in order: float8's sum is the same every run
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0)
    epilogue(acc, offs_m, offs_n, offs_n % N, M, N, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, N,
             stride_bs, stride_bias, stride_os, p0, p1, HAS_BIAS, HAS_RES, ACT, REQUANT, OUT_FP8, False,
             OUT_PER_COL, QMIN, QMAX)


def qmatmul_splitk(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
                   b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
                   out_scale: Tensor | None = None, out_zp: Tensor | None = None, mid_scale: Tensor | None = None,
                   mid_zp: Tensor | None = None, table: Tensor | None = None, *, trans_b: int = 0,
                   activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
                   dynamic: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """kiln::QMatMul (qgemm.qmatmul's contract) in two kernels for symmetric int8 or float8
    operands (module docstring); ValueError for what it does not take."""
    a_zp, b_zp, out_zp = (needed_zero_point(z) for z in (a_zp, b_zp, out_zp))
    if a_q.dtype not in (torch.int8, FP8) or b_q.dtype != a_q.dtype:
        raise ValueError(f"split-K qmatmul: int8 or float8_e4m3fn A and B alike; got {a_q.dtype}, {b_q.dtype}")
    if a_zp is not None or b_zp is not None or out_zp is not None or dynamic:
        raise ValueError("split-K qmatmul: zero points must be 0 (symmetric quantization)")
    if mid_scale is not None or mid_zp is not None or table is not None:
        raise ValueError("split-K qmatmul: no mid quantization or code table")
    y_dtype = output_dtype(a_scale, out_scale, out_zp, out_dtype)
    _check(a_q, b_q, a_scale, a_zp, b_zp, out_scale, out_zp, y_dtype, trans_b)
    fp8 = a_q.dtype == FP8
    cfg = dict((FP8_CONFIGS if fp8 else INT8_CONFIGS)[0] if config is None else config)
    lead, k = tuple(a_q.shape[:-1]), a_q.shape[-1]
    a2 = a_q.reshape(math.prod(lead), k)                                     # [M, K]
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    w = b_q if trans_b else b_q.t()                                          # [N, K]
    if w.stride(1) != 1:
        w = w.contiguous()
    m, n = a2.shape[0], w.shape[0]
    y = torch.empty((m, n), dtype=y_dtype, device=a_q.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    assert fp8 or k <= MAX_K
    bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], int(cfg["SPLIT_K"])
    assert bk >= MIN_BLOCK_K and split >= 1, f"config {cfg}: BLOCK_K >= {MIN_BLOCK_K}, SPLIT_K >= 1"
    steps = triton.cdiv(triton.cdiv(k, bk), split)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    partials = torch.empty((split, m, n), dtype=torch.float32 if fp8 else torch.int32, device=a_q.device)
    pdl = launch_options(a2)
    _partial_kernel[(tiles * split,)](
        a2, w, partials, m, n, k, a2.stride(0), w.stride(0), steps, FP8=fp8, EVEN_K=k % bk == 0,
        FP8_ACC=fp8_promotion(cfg) if fp8 else 0, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"],
        SPLIT_K=split, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl)
    code, p0, p1 = activation_code(activation, activation_params)
    qrange = OUT_TYPES.get(y_dtype) or (0, 0)
    per_col = (_per_channel(b_scale, n, "b_scale"), _per_channel(bias, n, "bias"),
               _per_channel(out_scale, n, "out_scale"))
    inv = y if out_scale is None else reciprocal_of(out_scale).reshape(-1)
    r2 = y if residual is None else residual.expand(*lead, n).reshape(m, n).contiguous()
    _finish_kernel[(tiles,)](
        partials, a_scale.reshape(-1), b_scale.reshape(-1), y if bias is None else bias.reshape(-1), r2,
        y.view(torch.uint8) if y_dtype == FP8 else y, inv, y, m, n, *per_col, p0, p1, FP8=fp8,
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=code, REQUANT=out_scale is not None,
        OUT_FP8=y_dtype == FP8, OUT_PER_COL=per_col[2] != 0, QMIN=qrange[0], QMAX=qrange[1], BLOCK_M=bm,
        BLOCK_N=bn, SPLIT_K=split, num_warps=4, **pdl)
    return y.reshape(*lead, n)

"""The float16/bfloat16 GEMM of gemm.py with operands brought in by the tensor memory
accelerator, one program per SM walking the output tiles (config PERSISTENT=1).

Same contract and epilogue as gemm.py's kernel (store_epilogue: alpha, bias, residual,
activation, and for kiln::MatMulQuantize the quantizing store). What differs is the K walk:
each step is one TMA copy of an A tile [BLOCK_M, BLOCK_K] and one of a B tile (from a [K, N]
weight, or [N, K] with trans_b, read in place either way); the copy engine zero-fills rows and
columns past the edges, so no address arithmetic or masks in the loop. The tile loop and the K
loop are flattened into one (tl.range flatten=True), so Triton pipelines across tiles: the next
tile's first loads are in flight while this tile's epilogue runs, which is what a short-K GEMM
with a heavy epilogue (MiniLM's FFN expansion: K 384, exact Gelu, an 8-bit store) spends its
time on. Applies to contiguous operands with 16-byte aligned rows and bases (applies()); the
launcher falls back to gemm.py's kernel with the same tiles elsewhere.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.gemm import epilogue_value, grouped_tile, store_epilogue
from kiln.kernels.triton.qgemm_tma import descriptor_type, sm_count, store_boxes
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor


@triton.jit
def gemm_tma_kernel(
        a_desc, b_desc, BIAS, RES, Y, QINV, QZP, M, N, K, programs, stride_ym, alpha, p0, p1,
        B_NK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        QUANT: tl.constexpr, Q_PER_CHANNEL: tl.constexpr, Q_HAS_ZP: tl.constexpr, FLOAT8: tl.constexpr,
        QMIN: tl.constexpr, QMAX: tl.constexpr, Y_TMA: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([off_m, k * BLOCK_K])                             # [BLOCK_M, BLOCK_K]
            if B_NK:
                b = b_desc.load([off_n, k * BLOCK_K]).T                       # [N, K] tile, transposed
            else:
                b = b_desc.load([k * BLOCK_K, off_n])                         # [BLOCK_K, BLOCK_N]
            acc = tl.dot(a, b, acc)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if Y_TMA:  # Y and RES are descriptors: one TMA box out (and in), as in qgemm_tma.py
            res = 0.0
            if HAS_RES:
                res = RES.load([off_m, off_n])
            v = epilogue_value(acc, offs_n, offs_n % N, N, res, BIAS, QINV, QZP, alpha, p0, p1, HAS_BIAS, HAS_RES,
                               ACT, QUANT, Q_PER_CHANNEL, Q_HAS_ZP, FLOAT8, QMIN, QMAX)
            Y.store([off_m, off_n], v.to(Y.dtype))
        else:
            offs_m = off_m + tl.arange(0, BLOCK_M)
            store_epilogue(acc, offs_m, offs_n, offs_n % N, M, N, BIAS, RES, Y, QINV, QZP, stride_ym, alpha, p0,
                           p1, HAS_BIAS, HAS_RES, ACT, QUANT, Q_PER_CHANNEL, Q_HAS_ZP, FLOAT8, QMIN, QMAX)


def applies(a2: Tensor, b: Tensor) -> bool:
    """TMA takes the operands: float16/bfloat16, A [M, K] and B (as stored) contiguous, rows and
    bases 16-byte aligned, and this Triton has host-side descriptors."""
    return (a2.dtype in (torch.float16, torch.bfloat16) and b.dtype == a2.dtype and a2.is_contiguous()
            and b.is_contiguous() and (a2.shape[1] * a2.element_size()) % 16 == 0
            and (b.shape[1] * b.element_size()) % 16 == 0 and a2.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
            and descriptor_type() is not None)


def launch(a2: Tensor, b: Tensor, trans_b: int, pointers: tuple[Tensor, ...], m: int, n: int, k: int,
           stride_ym: int, alpha: float, p0: float, p1: float, flags: dict[str, Any], y_tma: bool = False) -> None:
    """Run the kernel on A [M, K] and B as stored ([N, K] with trans_b, else [K, N]); `pointers`
    and `flags` as gemm.py's kernel takes them (bias, residual, Y, quantization parameters);
    y_tma (config Y_TMA): Y and the residual through TMA boxes where qgemm_tma.store_boxes allows."""
    bm, bn, bk = flags["BLOCK_M"], flags["BLOCK_N"], flags["BLOCK_K"]
    desc = descriptor_type()
    programs = min(triton.cdiv(m, bm) * triton.cdiv(n, bn), sm_count(a2.device))
    bias, res, y, qinv, qzp = pointers
    y, res, y_tma = store_boxes({**flags, "Y_TMA": y_tma}, a2.element_size(), y, res, flags["HAS_RES"])
    gemm_tma_kernel[(programs,)](
        desc.from_tensor(a2, [bm, bk]), desc.from_tensor(b, [bn, bk] if trans_b else [bk, bn]), bias, res, y,
        qinv, qzp, m, n, k, programs, stride_ym, alpha, p0, p1, B_NK=bool(trans_b), Y_TMA=y_tma, **flags,
        **launch_options(a2))

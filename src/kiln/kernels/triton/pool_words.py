"""MaxPool over 8-bit integers four channels at a time (pool.py's WORDS configs).

pool.py's byte-key path spends four 32-bit instructions per input byte and tap (widen, key,
mask, max): over ResNet-50's int8 stem pool, 12.8 M outputs of 9 taps, that is the ALU's work
for ~30 us, about what the kernel takes (28.6 us on an H200, benchmarks/kernels_pool.py). Here
a channels-last X is read as 32-bit words of four channels and compared as two lanes of 16 bits
(PTX max.s16x2 / max.u16x2, sm_90): a lane's maximum has the maximum of its high byte in its
high byte, whatever its low byte holds. The word itself puts channels 1 and 3 in its lanes' high
bytes, the word shifted left by 8 channels 0 and 2; a running maximum of each, then the four
high bytes put back in order, give the four channels' maxima: four instructions per word and
tap (mask, shift, two lane maxima), one per byte.

Taps in the padding load the word of four lowest values (0x80 bytes for int8, 0x00 for uint8),
set by a select as pool.py's keys are. Where the instructions are missing (Triton's
interpreter: CPU tests) the lane maximum is computed from the lanes widened to 32 bits, so the
tests check the word logic and the GPU tests the instructions. The oracle is MaxPool
(kernels/reference/pooling.py); the result is exact (a maximum is one of the inputs).

On an H200 (2026-11-29, b4515d3, benchmarks/kernels_pool.py) the int8 stem pool took 22.6 us with
32 pixels x 16 words a program, against 28.8 for the best byte-key config in the same run (one
16-byte load per thread and tap; larger tiles, more registers, were slower: 26.8-44.1 us); the
tuner takes it in ResNet-50's int8 engine (22.5 us in its per-step profile).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.compiled import COMPILED
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs
from kiln.kernels.triton.pool_window import output_pixels, window_tap

Tensor = torch.Tensor

LOWEST_WORD = {torch.int8: -0x7F7F7F80, torch.uint8: 0}   # 0x80808080 as int32; 0


@triton.jit
def _lane_max(a, b, SIGNED: tl.constexpr):
    """The lane-wise maximum of two pairs of 16-bit lanes held in int32 words."""
    if COMPILED:
        if SIGNED:
            m = tl.inline_asm_elementwise("max.s16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32,
                                          is_pure=True, pack=1)
        else:
            m = tl.inline_asm_elementwise("max.u16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32,
                                          is_pure=True, pack=1)
    else:
        if SIGNED:
            lo = tl.maximum((a << 16) >> 16, (b << 16) >> 16)
            hi = tl.maximum(a >> 16, b >> 16)
        else:
            lo = tl.maximum(a & 0xFFFF, b & 0xFFFF)
            hi = tl.maximum((a >> 16) & 0xFFFF, (b >> 16) & 0xFFFF)
        m = (hi << 16) | (lo & 0xFFFF)
    return m


@triton.jit
def _max_pool2d_words_kernel(X, Y, P, C4, H, W, OH, OW, sxn, sxh, sxw, syn, syh, syw, SH, SW, PH, PW, DH, DW,
                             LOWEST: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SIGNED: tl.constexpr,
                             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)              # [BLOCK_P] output pixels
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)              # [BLOCK_C] words of 4 channels
    p_ok = offs_p < P
    c_ok = offs_c < C4
    n, oh, ow = output_pixels(offs_p, OH, OW)
    x_pix = X + n * sxn
    low = tl.full((BLOCK_P, BLOCK_C), LOWEST, tl.int32)
    odd = low        # lanes' high bytes: channels 1 and 3 of each word
    even = low       # of the word shifted left by 8: channels 0 and 2
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            at, ok = window_tap(oh, ow, p_ok, c_ok, H, W, sxh, sxw, kh, kw, SH, SW, PH, PW, DH, DW)
            ptrs = x_pix[:, None] + at + offs_c[None, :]
            w = tl.where(ok, tl.load(ptrs, mask=ok, other=0), low)
            odd = _lane_max(odd, w, SIGNED)
            even = _lane_max(even, w << 8, SIGNED)
    y = ((even >> 8) & 0x00FF00FF) | (odd & ~0x00FF00FF)
    y_ptrs = Y + (n * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] + offs_c[None, :]
    tl.store(y_ptrs, y, mask=p_ok[:, None] & c_ok[None, :])


def words_apply(x: Tensor) -> bool:
    """X int8 or uint8, channels-last and dense, C a multiple of 4, at a 4-byte aligned address."""
    return (x.dtype in LOWEST_WORD and x.dim() == 4 and x.shape[1] % 4 == 0 and x.data_ptr() % 4 == 0
            and x.is_contiguous(memory_format=torch.channels_last))


def max_pool2d_words(x: Tensor, y: Tensor, k: Sequence[int], s: Sequence[int], d: Sequence[int],
                     p: Sequence[int], block_p: int, block_c: int, num_warps: int) -> None:
    """Y (channels-last, X's type and geometry's output) = MaxPool of X, where words_apply(X)."""
    xw = x.permute(0, 2, 3, 1).view(torch.int32)                             # [N, H, W, C / 4]
    yw = y.permute(0, 2, 3, 1).view(torch.int32)
    n, h, w, c4 = xw.shape
    _, oh, ow, _ = yw.shape
    block_c = min(block_c, max(4, triton.next_power_of_2(c4)))
    grid = (triton.cdiv(n * oh * ow, block_p), triton.cdiv(c4, block_c))
    _max_pool2d_words_kernel[grid](xw, yw, n * oh * ow, c4, h, w, oh, ow, xw.stride(0), xw.stride(1), xw.stride(2),
                                   yw.stride(0), yw.stride(1), yw.stride(2), s[0], s[1], p[0], p[1], d[0], d[1],
                                   LOWEST_WORD[x.dtype], KH=k[0], KW=k[1], SIGNED=x.dtype == torch.int8,
                                   BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps, **launch_options(xw))

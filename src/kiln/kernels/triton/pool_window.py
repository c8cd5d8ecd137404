"""The window walk MaxPool's kernels share (pool.py's, over any type, and pool_words.py's, four
8-bit channels a word): a program's output pixels split into (n, oh, ow), and for each tap
(kh, kw) of their windows, where it lies in X and whether inside X."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def output_pixels(offs_p, OH, OW):
    """(n as int64, oh, ow) of flat output pixel indices n * OH * OW + oh * OW + ow."""
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    n = (offs_p // (OW * OH)).to(tl.int64)
    return n, oh, ow


@triton.jit
def window_tap(oh, ow, p_ok, c_ok, H, W, sxh, sxw, kh, kw, SH, SW, PH, PW, DH, DW):
    """Tap (kh, kw) of each output pixel's window: its offset in X from the pixel's image
    ([BLOCK_P, 1], int64) and where it is inside X and the channel real ([BLOCK_P, BLOCK_C])."""
    ih = oh * SH - PH + kh * DH
    iw = ow * SW - PW + kw * DW
    ok = (p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & c_ok[None, :]
    return (ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)[:, None], ok

"""X [N, C, H, W] (any strides) copied into channels-last pixels of PIX elements inside a zero frame.

The implicit-GEMM convolution's ROWS walk (qconv.py) reads a convolution with few input
channels (ResNet's stem, C = 3) from this form: every pixel PIX elements (C of X, then
zeros), the padding present as zeros, so the kernel needs no masks. One program writes
BLOCK elements of one framed row (n, hp): each element is X's value where the row and
column fall inside the image and the channel is below C, else 0. One pass over the
output, reading X through its strides (NCHW straight from the model's input): torch's
way (zeros, then a strided copy into the interior) takes two passes and a slow
non-contiguous copy kernel. Values are moved, never converted: 8-bit X (float8 too) is
copied as bytes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
BLOCK = 1024


@triton.jit
def _frame_kernel(x_ptr, y_ptr, C, H, W, HP, ROW, PIX, PH, PW, sxn, sxc, sxh, sxw, BLOCK: tl.constexpr):
    row = tl.program_id(0)                       # n * HP + hp
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)   # element of the framed row: wp * PIX + channel
    n = row // HP
    ih = tl.zeros([BLOCK], tl.int32) + (row % HP - PH)   # a vector: the row's test joins the mask
    iw = e // PIX - PW
    ch = e % PIX
    inside = (e < ROW) & (ch < C) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    src = x_ptr + n.to(tl.int64) * sxn + ch * sxc + ih * sxh + iw * sxw
    v = tl.load(src, mask=inside, other=0)
    tl.store(y_ptr + row.to(tl.int64) * ROW + e, v, mask=e < ROW)


def frame(x: Tensor, pixel: int, hp: int, wp: int, ph: int, pw: int) -> Tensor:
    """[N, pixel, hp, wp] channels-last (dense [N, hp, wp, pixel] underneath), X's dtype: X at
    rows ph.. and columns pw.., channels 0..C-1; zeros elsewhere. Needs pixel >= C."""
    n, c, h, w = x.shape
    assert pixel >= c and hp >= ph + h and wp >= pw + w
    bits = torch.uint8 if x.element_size() == 1 else x.dtype      # float8 moved as bytes
    src = x.view(bits)
    out = torch.empty((n, hp, wp, pixel), dtype=bits, device=x.device)
    row = wp * pixel
    if out.numel():
        grid = (n * hp, triton.cdiv(row, BLOCK))
        _frame_kernel[grid](src, out, c, h, w, hp, row, pixel, ph, pw, *src.stride(), BLOCK=BLOCK, num_warps=4)
    return out.permute(0, 3, 1, 2).view(x.dtype)

"""X [N, C, H, W] (any strides) copied into channels-last pixels of PIX elements inside a zero frame.

The implicit-GEMM convolution's ROWS walk (qconv.py) reads a convolution with few input
channels (ResNet's stem, C = 3) from this form: every pixel PIX elements (C of X, then
zeros), the padding present as zeros, so the kernel needs no masks. One program writes
BLOCK_W pixels of one framed row (n, hp) as a [BLOCK_W, pixel] tile: X's values where the
row and column fall inside the image and the channel is below C, else 0. The tile is
loaded along W (each channel's run of an NCHW row is contiguous) and stored pixel-major
(one dense run), Triton moving it between the two orders on chip. One pass over the
output, reading X through its strides (NCHW straight from the model's input): torch's
way (zeros, then a strided copy into the interior) takes two passes and a
non-contiguous copy kernel. Values are moved, never converted: 8-bit X (float8 too) is
copied as bytes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor
BLOCK_W = 128


@triton.jit
def _frame_kernel(x_ptr, y_ptr, C, H, W, HP, WP, PIX, PH, PW, sxn, sxc, sxh, sxw,
                  BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr):
    row = tl.program_id(0)                                   # n * HP + hp
    wp = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)  # framed columns
    ch = tl.arange(0, BLOCK_P)                               # elements of a pixel
    n = row // HP
    ih = tl.zeros([BLOCK_W], tl.int32) + (row % HP - PH)   # a vector: the row's test joins the mask
    iw = wp - PW
    col_in = (iw >= 0) & (iw < W) & (ih >= 0) & (ih < H)
    inside = col_in[:, None] & (ch < C)[None, :]
    src = x_ptr + n.to(tl.int64) * sxn + ih[:, None] * sxh + iw[:, None] * sxw + ch[None, :] * sxc
    v = tl.load(src, mask=inside, other=0)                  # [BLOCK_W, BLOCK_P]: each channel's run along W
    dst = y_ptr + row.to(tl.int64) * WP * PIX + wp[:, None] * PIX + ch[None, :]
    tl.store(dst, v, mask=(wp < WP)[:, None] & (ch < PIX)[None, :])   # pixel-major: one dense run


def frame(x: Tensor, pixel: int, hp: int, wp: int, ph: int, pw: int) -> Tensor:
    """[N, pixel, hp, wp] channels-last (dense [N, hp, wp, pixel] underneath), X's dtype: X at
    rows ph.. and columns pw.., channels 0..C-1; zeros elsewhere. Needs pixel >= C."""
    n, c, h, w = x.shape
    assert pixel >= c and hp >= ph + h and wp >= pw + w
    bits = torch.uint8 if x.element_size() == 1 else x.dtype      # float8 moved as bytes
    src = x.view(bits)
    out = torch.empty((n, hp, wp, pixel), dtype=bits, device=x.device)
    if out.numel():
        grid = (n * hp, triton.cdiv(wp, BLOCK_W))
        _frame_kernel[grid](src, out, c, h, w, hp, wp, pixel, ph, pw, *src.stride(), BLOCK_W=BLOCK_W,
                            BLOCK_P=triton.next_power_of_2(pixel), num_warps=4)
    return out.permute(0, 3, 1, 2).view(x.dtype)

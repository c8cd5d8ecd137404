"""X tiles of the Triton kiln::QConv's pointer walks (qconv.py) where X has a zero point: uint8
values shifted into int8, padding lanes holding the zero point's code (qconv.py's module docstring):
per element (x_tile), or, in the TAPS walk where a whole row of the tile is padding or not
(tap_tile), by pointing the padded rows at a row of zero-point codes (qconv_plan.zero_point_row):
one select a row instead of one an element."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def signed_x(x, X_U8: tl.constexpr):
    """uint8 X -> int8 as the value minus 128, exactly: the top bit flipped in place (one logic op
    per four packed bytes); int8 and float8 tiles pass."""
    if X_U8:
        x = (x ^ 0x80).to(tl.int8, bitcast=True)
    return x


@triton.jit
def x_tile(ptrs, mask, X_U8: tl.constexpr, X_ZP: tl.constexpr, za):
    """An X tile loaded under `mask`, 0 outside; with a zero point (X_ZP), uint8 X shifted
    (signed_x) and the masked lanes set to the zero point za (the padding's code: 0 once
    dequantized). The masked lanes are loaded as 0 and replaced afterwards: Triton 3.6
    sign-extends a non-zero `other` of a vectorised 8-bit load across the 32-bit word (qgemm.py's
    _load_signed)."""
    if X_ZP:
        a = signed_x(tl.load(ptrs, mask=mask, other=0), X_U8)
        a = tl.where(mask, a, (tl.zeros_like(a).to(tl.int32) + za).to(tl.int8))
    else:
        a = tl.load(ptrs, mask=mask, other=0.0)
    return a


@triton.jit
def tap_tile(X, rows, inside, offs_k, cmask, ZPROW, X_U8: tl.constexpr, X_ZP: tl.constexpr, ZP_ROW: tl.constexpr,
             MASK_C: tl.constexpr, za):
    """The TAPS walk's tile of one tap: BLOCK_K channels at X + rows for each pixel, where `inside`
    (else padding); `cmask`: the channels within C (MASK_C). ZP_ROW: padded rows read ZPROW, a row
    of the zero point's codes, and channels past C read 0 (W is 0 there)."""
    if ZP_ROW:
        ptrs = tl.where(inside, X + rows, ZPROW)[:, None] + offs_k[None, :]
        if MASK_C:
            a = tl.load(ptrs, mask=cmask[None, :], other=0)
        else:
            a = tl.load(ptrs)
        a = signed_x(a, X_U8)
    elif MASK_C:
        a = x_tile(X + rows[:, None] + offs_k[None, :], inside[:, None] & cmask[None, :], X_U8, X_ZP, za)
    else:
        a = x_tile(X + rows[:, None] + offs_k[None, :], inside[:, None], X_U8, X_ZP, za)
    return a

"""MaxPool (2-D, no Indices) in Triton, over float, 8-bit integer and float8 tensors in any memory format.

The oracle is MaxPool (kernels/reference/pooling.py): Y[n, c, oh, ow] is the largest X[n, c,
oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] over the window's taps inside the image (positions in
the padding, or past the end in ceil mode, hold the type's lowest value and never win); a NaN
in a window makes its maximum NaN. The maximum is one of the inputs, so Y is exact: the kernel
compares values and stores the winner, no arithmetic.

A program computes BLOCK_P output pixels (n, oh, ow) times BLOCK_C channels and walks the
KH x KW taps (unrolled: the window is a compile-time constant), loading for each a
[BLOCK_P, BLOCK_C] tile through X's strides. In channels-last memory (ResNet's, after the
layout pass) a pixel's channels are contiguous, so every load is a run of vector loads; the
taps of neighbouring windows overlap (3x3 stride 2: each input read 2.25 times) and hit L2.
Y is allocated in X's memory format (channels-last in, channels-last out) and written through
its strides. torch's channels-last max pool is several times slower than the bytes it moves
(ResNet-50's stem pool, [64, 64, 112, 112] fp16, in 0.215 ms on an H200 where the traffic
takes ~30 us); this is why the kernel exists.

Types. Every type compares in float32 (float8 in the interpreter aside, below; exact: every value is a float32, and a
conversion per element costs nothing in a memory-bound pass). int8/uint8 are loaded as bytes
and the sign applied in int32: loaded as int8, the compiled kernel disagreed with the
reference in 153 of 802816 maxima on an H200 (benchmarks/kernels_pool.py, 2026-11-27; the
small shapes of the tests agreed), comparing in int8 or in float32 alike. That path took twice
fp8's time (65 against 30 us at the stem), so the configs with INT_KEYS compare the bytes
themselves as int32 keys that order as the values (uint8: the byte; int8: the byte XOR 0x80,
offset binary: -128 -> 0, 127 -> 255), a masked tap giving key 0 (the lowest value's), so a
tap costs a load, an XOR, a select and a max, with no float conversion. The key of a masked tap
is set by a select, not by the load's `other`: taking the masked load's `other` (the lowest
value's byte) as the key, the compiled kernel missed 151 of 802816 maxima on an H200
(2026-11-27, the stem shape, seed 4). With the select: exact there, 28.6 us against the float
path's 66.0 (benchmarks/kernels_pool.py, same day and card).
The WORDS configs take channels-last int8/uint8 four channels a 32-bit word, two 16-bit lanes
an instruction (pool_words.py), about a quarter of the byte keys' instructions per byte.
float8_e4m3fn: compiled, the GPU's conversion to float32 and back (exact: every e4m3
value is a float32, and the maximum is one of them); in the interpreter, whose float8 casts
drop NaN, its bits are mapped to an order-preserving integer key (sign-magnitude to two's
complement: +m -> m, -m -> -m, so -0 and +0 tie; a NaN, 0x7F or 0xFF, -> 128, above every
number, so it wins as NaN propagates) and mapped back.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.pooling import pool_geometry
from kiln.kernels.triton.compiled import COMPILED
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs
from kiln.kernels.triton.pool_window import output_pixels, window_tap
from kiln.kernels.triton.pool_words import max_pool2d_words, words_apply

Tensor = torch.Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8, torch.float8_e4m3fn)
KIND_FLOAT, KIND_INT, KIND_FP8 = 0, 1, 2
# Taps per window the kernel unrolls: larger windows (global-pool sized) stay with torch.
MAX_TAPS = 64

# The tuning space: output pixels x channels per program, warps. Channels are the contiguous
# axis in channels-last memory: wide BLOCK_C for wide layers, more pixels for narrow ones.
# INT_KEYS (8-bit integer inputs only; other types ignore it): 1 compares byte keys in int32,
# 0 compares the values in float32 (module docstring); the tuner keeps whichever is faster and right.
# A WORDS config over any other X runs the byte path with its BLOCK_P x BLOCK_C.
_TILES: tuple[dict[str, int], ...] = (
    {"BLOCK_P": 64, "BLOCK_C": 64, "num_warps": 4},
    {"BLOCK_P": 128, "BLOCK_C": 64, "num_warps": 4},
    {"BLOCK_P": 32, "BLOCK_C": 128, "num_warps": 4},
    {"BLOCK_P": 16, "BLOCK_C": 256, "num_warps": 4},
    {"BLOCK_P": 256, "BLOCK_C": 32, "num_warps": 8},
)
# WORDS (int8 and uint8 in channels-last memory, C a multiple of 4; others ignore it): four
# channels a 32-bit word, compared two lanes of 16 bits at a time (the words kernel below).
_WORD_TILES: tuple[dict[str, int], ...] = (
    {"BLOCK_P": 64, "BLOCK_C": 16, "num_warps": 4},
    {"BLOCK_P": 128, "BLOCK_C": 16, "num_warps": 4},
    {"BLOCK_P": 256, "BLOCK_C": 16, "num_warps": 8},
    {"BLOCK_P": 32, "BLOCK_C": 64, "num_warps": 4},
)
CONFIGS: tuple[dict[str, int], ...] = (_TILES + tuple({**t, "INT_KEYS": 1} for t in _TILES[:3])
                                       + tuple({**t, "WORDS": 1} for t in _WORD_TILES))


@triton.jit
def _fp8_key(bits):
    """float8_e4m3fn bits (int32 0..255) -> an integer that orders as the values (module docstring)."""
    mag = bits & 0x7F
    key = tl.where(bits >= 0x80, -mag, mag)
    return tl.where(mag == 0x7F, 128, key)


@triton.jit
def _fp8_bits(key):
    """The inverse of _fp8_key (NaN back as 0x7F)."""
    return tl.where(key >= 128, 0x7F, tl.where(key < 0, 0x80 | -key, key))


@triton.jit
def _max_pool2d_kernel(X, Y, P, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                       SH, SW, PH, PW, DH, DW, KH: tl.constexpr, KW: tl.constexpr, KIND: tl.constexpr,
                       LOW: tl.constexpr, SIGNED: tl.constexpr, INT_KEYS: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_C: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)              # [BLOCK_P] output pixels
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)              # [BLOCK_C] channels
    p_ok = offs_p < P
    c_ok = offs_c < C
    n, oh, ow = output_pixels(offs_p, OH, OW)
    x_pix = X + n * sxn                                                      # [BLOCK_P]
    x_ch = offs_c.to(tl.int64)[None, :] * sxc                                # [1, BLOCK_C]
    if KIND == 2 and not COMPILED:
        best = tl.full((BLOCK_P, BLOCK_C), LOW, tl.int32)
    elif KIND == 1 and INT_KEYS:    # byte keys: 0 is the lowest value's
        best = tl.zeros((BLOCK_P, BLOCK_C), tl.int32)
    elif KIND == 1:                 # the type's lowest value, which a window inside the padding gives
        best = tl.full((BLOCK_P, BLOCK_C), LOW, tl.float32)
    else:           # every other type compares in float32 (exact both ways)
        best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            at, ok = window_tap(oh, ow, p_ok, c_ok, H, W, sxh, sxw, kh, kw, SH, SW, PH, PW, DH, DW)
            ptrs = x_pix[:, None] + at + x_ch
            if KIND == 2 and COMPILED:   # the GPU's exact e4m3 -> float32 conversion
                v = tl.load(ptrs, mask=ok, other=0).to(tl.float8e4nv, bitcast=True).to(tl.float32)
                best = tl.where(ok, tl.maximum(best, v, propagate_nan=tl.PropagateNan.ALL), best)
            elif KIND == 2:              # the interpreter: through the order key, in integers
                v = _fp8_key(tl.load(ptrs, mask=ok, other=0).to(tl.int32) & 0xFF)
                best = tl.where(ok, tl.maximum(best, v), best)
            elif KIND == 1 and INT_KEYS:  # 8-bit integers as order-preserving byte keys (module docstring)
                k = tl.load(ptrs, mask=ok, other=0).to(tl.int32)
                if SIGNED:
                    k = k ^ 0x80
                best = tl.maximum(best, tl.where(ok, k, 0))   # a masked tap: key 0 (see the docstring)
            elif KIND == 1:              # 8-bit integers as bytes, the sign applied in int32
                u = tl.load(ptrs, mask=ok, other=0).to(tl.int32)
                if SIGNED:
                    u = tl.where(u >= 128, u - 256, u)
                best = tl.where(ok, tl.maximum(best, u.to(tl.float32)), best)
            else:
                v = tl.load(ptrs, mask=ok, other=LOW).to(tl.float32)
                best = tl.maximum(best, v, propagate_nan=tl.PropagateNan.ALL)
    y_ptrs = Y + (n * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] + offs_c.to(tl.int64)[None, :] * syc
    mask = p_ok[:, None] & c_ok[None, :]
    if KIND == 2 and COMPILED:   # the maximum is an input: the conversion back is exact
        tl.store(y_ptrs, best.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=mask)
    elif KIND == 2:
        tl.store(y_ptrs, _fp8_bits(best).to(tl.uint8), mask=mask)
    elif KIND == 1 and INT_KEYS:
        tl.store(y_ptrs, ((best ^ 0x80) if SIGNED else best).to(tl.uint8), mask=mask)
    elif KIND == 1:
        tl.store(y_ptrs, (tl.where(mask, best, 0.0).to(tl.int32) & 0xFF).to(tl.uint8), mask=mask)
    else:
        tl.store(y_ptrs, best.to(Y.dtype.element_ty), mask=mask)


def _kind(dtype: torch.dtype) -> tuple[int, Any]:
    """(KIND, the lowest value a masked tap loads) for X's type."""
    if dtype == torch.float8_e4m3fn:
        return KIND_FP8, -256                      # below every key (-127 .. 128)
    if dtype.is_floating_point:
        return KIND_FLOAT, float("-inf")
    return KIND_INT, torch.iinfo(dtype).min


def max_pool2d(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0, dilations: Sequence[int] | None = None,
               kernel_shape: Sequence[int], pads: Sequence[int] | None = None, storage_order: int = 0,
               strides: Sequence[int] | None = None, config: dict[str, Any] | None = None) -> Tensor:
    """Y of MaxPool over a 4-D X (module docstring), in X's memory format; no Indices (storage_order
    only numbers Indices)."""
    assert x.dtype in DTYPES, f"MaxPool.triton takes {[str(d).replace('torch.', '') for d in DTYPES]}, not {x.dtype}"
    assert x.dim() == 4, f"MaxPool.triton pools 2-D (X [N, C, H, W]); X has shape {tuple(x.shape)}"
    k, s, d, p, out = pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    assert k[0] * k[1] <= MAX_TAPS, f"MaxPool.triton unrolls windows of up to {MAX_TAPS} taps, not {k[0] * k[1]}"
    cfg = dict(CONFIGS[0] if config is None else config)
    n, c, h, w = x.shape
    oh, ow = out
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    pixels = n * oh * ow
    if y.numel() == 0:
        return y
    assert x.numel() > 0, f"MaxPool.triton: X of shape {tuple(x.shape)} is empty, its windows hold only padding"
    if cfg.get("WORDS") and words_apply(x):   # four channels a word (pool_words.py)
        max_pool2d_words(x, y, k, s, d, p, int(cfg["BLOCK_P"]), int(cfg["BLOCK_C"]), int(cfg["num_warps"]))
        return y
    kind, low = _kind(x.dtype)
    x_in, y_out = (x, y) if kind == KIND_FLOAT else (x.view(torch.uint8), y.view(torch.uint8))  # 8-bit: as bytes
    block_c = min(int(cfg["BLOCK_C"]), max(16, triton.next_power_of_2(c)))
    grid = (triton.cdiv(pixels, int(cfg["BLOCK_P"])), triton.cdiv(c, block_c))
    _max_pool2d_kernel[grid](x_in, y_out, pixels, c, h, w, oh, ow, *x.stride(), *y.stride(),
                             s[0], s[1], p[0], p[1], d[0], d[1], KH=k[0], KW=k[1], KIND=kind, LOW=low,
                             SIGNED=x.dtype == torch.int8, INT_KEYS=int(cfg.get("INT_KEYS", 0)),
                             BLOCK_P=int(cfg["BLOCK_P"]), BLOCK_C=block_c, num_warps=int(cfg["num_warps"]),
                             **launch_options(x_in))
    return y

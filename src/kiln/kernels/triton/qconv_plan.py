"""How the Triton implicit-GEMM kiln::QConv (qconv.py) walks a 2-D convolution, decided on the host.

- ConvGeometry / conv_geometry: the window (kernel, strides, dilations, begin pads, output size)
  from the ONNX attributes, auto_pad resolved.
- packed_weight: W [OC, C, KH, KW] as the GEMM's B^T, K-contiguous in (kh, kw, c) order, packed
  once per weight tensor (padded per kernel row or per tap when the K walk needs it).
- KLoop / k_loop: which K walk the kernel takes (PIXELS, TAPS or ROWS; qconv.py's docstring
  explains each) and its BLOCK_K, steps and padding.
- framed_pixels: ROWS's copy of X into pixels of 4 elements inside a zero frame of the padding.
- small_accumulator: whether the int8 sums are small enough for the exact fast conversion.
- INT8_CONFIGS, FP8_CONFIGS, FLOAT_CONFIGS: the kernel's tuning spaces for int8, float8 and
  16-bit float (conv.py) operands; the *_S2D_CONFIGS those of the folded walk (qconv_s2d.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kiln.kernels.conv_fold import PIXEL_ALIGN
from kiln.kernels.memo import derived, derived_table, read_once
from kiln.kernels.triton.frame import frame
from kiln.kernels.reference.common import resolve_pads, spatial_attrs
from kiln.kernels.triton.qgemm_space import MIN_BLOCK_K  # 8-bit MMAs take K in steps of 32

Tensor = torch.Tensor

PIXELS, TAPS, ROWS = 0, 1, 2           # the kernel's K walks (qconv.py's docstring)


@dataclass(frozen=True, slots=True)
class ConvGeometry:
    """A 2-D convolution's window: kernel, strides, dilations, begin pads, output size."""
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    ph: int
    pw: int
    oh: int
    ow: int

    def pointwise(self, h: int, w: int) -> bool:
        """1x1, stride 1, no padding (an H x W output): output pixel m reads input pixel m alone."""
        unit = self.kh == self.kw == self.sh == self.sw == 1 and self.ph == self.pw == 0
        return unit and (self.oh, self.ow) == (h, w)


def conv_geometry(x_shape: Sequence[int], w_shape: Sequence[int], *, auto_pad: str = "NOTSET",
                  dilations: Sequence[int] | None = None, kernel_shape: Sequence[int] | None = None,
                  pads: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> ConvGeometry:
    """The window of Conv(X [N, C, H, W], W [M, C, KH, KW]) with ONNX attributes (auto_pad resolved)."""
    k, s, d = spatial_attrs(2, kernel_shape or w_shape[2:], strides, dilations)
    if list(k) != list(w_shape[2:]):
        raise ValueError(f"kiln::QConv kernel_shape {k} differs from the weight's spatial dims {list(w_shape[2:])}")
    p = resolve_pads(auto_pad, x_shape[2:], k, s, d, pads)                  # [top, left, bottom, right]
    oh = (x_shape[2] + p[0] + p[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (x_shape[3] + p[1] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return ConvGeometry(k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], max(oh, 0), max(ow, 0))


# weight tensor -> {(row_pad, tap_pad): its packed copy} (kernels/memo.py)
_PACKED = derived_table()


def packed_weight(w: Tensor, row_pad: int = 0, tap_pad: int = 0) -> Tensor:
    """W [OC, C, KH, KW] as B^T, K-contiguous, packed once per tensor: [OC, KH*KW*C] in (kh, kw, c)
    order; with `row_pad` (the ROWS path) [OC, KH*row_pad], each kernel row's KW*C values
    followed by zeros up to row_pad; with `tap_pad` (TAPS over padded channels)
    [OC, KH*KW*tap_pad], each tap's C values followed by zeros up to tap_pad."""
    oc, c, kh, kw = w.shape
    if not row_pad and not tap_pad and w.is_contiguous(memory_format=torch.channels_last):  # a view
        return w.permute(0, 2, 3, 1).reshape(oc, -1)
    return derived(_PACKED, w, (row_pad, tap_pad), lambda t: _pack(t, row_pad, tap_pad))


def _pack(w: Tensor, row_pad: int, tap_pad: int) -> Tensor:
    oc, c, kh, kw = w.shape
    taps = w.permute(0, 2, 3, 1)                                             # [OC, KH, KW, C]
    if tap_pad:
        padded = torch.zeros((oc, kh, kw, tap_pad), dtype=w.dtype, device=w.device)
        padded[..., :c] = taps
        taps = padded
    rows = taps.reshape(oc, kh, -1)
    if row_pad:
        padded = torch.zeros((oc, kh, row_pad), dtype=w.dtype, device=w.device)
        padded[:, :, :rows.shape[2]] = rows
        rows = padded
    return rows.reshape(oc, -1).contiguous()


_TILE = {"GROUP_M": 8}
_TMA = {"TMA": 1}                       # qconv_window.py's WINDOW walk where it applies
# Y_TMA: the output tile leaves as one TMA box where the output is a flat [N*H*W, OC] matrix (1x1
# stride-1 convs, either walk) and the box fits. On for the 4-warp and the persistent configs; the
# 8-warp one-tile ones lost 3% against the pointer store over ResNet-50's 1x1 layers, where the
# 4-warp ones gained up to 1.27x on the residual layers (benchmarks/kernels_qconv_store.py, H200).
_Y = {"Y_TMA": 1}
_PERSISTENT = {"TMA": 1, "PERSISTENT": 1, **_Y}
# Two persistent programs per SM (qgemm_tma.persistent_programs): one warpgroup each, stages and
# output box within half an SM's shared memory, so one program's epilogue runs beside the other's MMAs.
_SHARED = {**_PERSISTENT, "SM_PROGRAMS": 2}
# IMAGES boxes (qconv_window.py): BLOCK_M images at one output pixel, persistent, the tile stored
# through its strides. They won ResNet-50's 3x3 layers past stage 1 and its 7x7 ones at batch 64
# with fp8 (s4 3x3 512 26.4 -> 17.0 us) and one int8 layer (benchmarks/kernels_qconv_walks.py,
# H200, 2026-11-29). A 1x1 stride-1 conv runs the config as the flat-row WINDOW walk.
_IMAGES = {"TMA": 1, "PERSISTENT": 1, "IMAGES": 1}
# The tuning spaces. Shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K bytes (8-bit
# operands): 128x256x128 at 3 stages is 144 KiB of the 227 KiB an H100/H200 block may have.
# Narrow tiles (BLOCK_N 64) are for the 64-channel layers of ResNet's first stage. TMA=1 takes
# the WINDOW walk (C a multiple of 32, no dilation, strides dividing H and W, dense
# channels-last X; elsewhere the same tile through the pointer walks), PERSISTENT=1 with one
# program per SM. Each config is one that won at least one ResNet-50 layer at batch 64 on the
# H200 (benchmarks/kernels_qconv.py and the window comparison in BENCHMARKS.md, 2026-11-27),
# or the default; the build times every config per layer, so the spaces stay that short. The
# last two of each space won ResNet-50's residual 1x1 layers of stages 2-4 against the configs
# before them (benchmarks/kernels_qconv_residual.py, H200, 2026-11-29: fp8 s4 512->2048 14.0 ->
# 12.5 us, s3 16.2 -> 15.5; int8 s4 15.3 -> 13.3, s3 19.4 -> 18.5): shared memory for 2-3 stages
# only, where those layers have 1-4 K steps, leaves room for more programs per SM.
INT8_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, **_Y},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_Y},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_Y},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, **_PERSISTENT},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, **_PERSISTENT},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, **_PERSISTENT},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_TMA, **_Y},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_TMA, **_Y},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3, **_SHARED},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, **_SHARED},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_SHARED},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3, **_TMA},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, **_IMAGES},
    # fewer stages, more programs per SM: the residual 1x1 layers of stages 2-4 (below)
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 2, **_SHARED},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3, **_TMA, **_Y},
)
# fp8: configs with FP8_ACC > 0 keep a second float32 accumulator, so they stay at 64 float32
# registers per thread per accumulator (128x128 over 8 warps, 128x64 over 4). The first config
# is the default when tuning is off: promoted once per K step. FP8_ACC 0 (no promotion) is
# kept by the tuner only where the output meets the tolerance.
FP8_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 128},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 32},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 128, **_Y},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 128,
     **_PERSISTENT},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0, **_Y},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 3, "FP8_ACC": 0,
     **_PERSISTENT},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0,
     **_PERSISTENT},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 0,
     **_PERSISTENT},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 8, "num_stages": 4, "FP8_ACC": 0, **_TMA},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0, **_TMA,
     **_Y},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3, "FP8_ACC": 0,
     **_SHARED},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0,
     **_SHARED},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0,
     **_IMAGES},
    {"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 4, "FP8_ACC": 0,
     **_IMAGES},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 2, "FP8_ACC": 0,
     **_SHARED},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, **_TILE, "num_warps": 4, "num_stages": 3, "FP8_ACC": 0, **_TMA,
     **_Y},
)


# 16-bit float operands (kernels/triton/conv.py): a stage holds twice the bytes of an 8-bit one,
# so K steps of 64 at most; the small-channel walks (ROWS, padded TAPS) take 32 or 64 anyway.
FLOAT_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, **_TILE, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, **_TILE, "num_warps": 4, "num_stages": 5},
)


# Folded space to depth first (qconv_s2d.py): the tuning spaces of the S2D tactics, for strided
# convs over few channels (ResNet's stem folds to a 4x1 conv over 64 channels: K steps of 64 at
# most, one 64-channel N tile). 4-warp tiles, as the ROWS walk's winners on the stem (128x64);
# the pointer walk (TAPS) and the TMA boxes of the folded view; Y_TMA stores the tile as a box.
# On the stem (benchmarks/kernels_stem.py, H200, int8) the 128x64 ones ran within 1% of each
# other, 64x64 25% slower.
_S2D = {"S2D": 1}
INT8_S2D_CONFIGS: tuple[dict[str, Any], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, **_Y, **_S2D},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, **_Y, **_S2D},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 3, **_S2D},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, **_TILE, "num_warps": 4, "num_stages": 4, **_TMA, **_S2D},
)
FP8_S2D_CONFIGS: tuple[dict[str, Any], ...] = tuple(
    {**c, "FP8_ACC": acc} for c in INT8_S2D_CONFIGS for acc in (0, 64))


@dataclass(frozen=True, slots=True)
class KLoop:
    """How the kernel walks K (module docstring): the path, its BLOCK_K, steps per tap (PIXELS,
    TAPS) or per kernel row (ROWS), the padded kernel-row length (ROWS, else 0), the padded
    channels per tap of the packed W (TAPS when C is not a multiple of 32, ROWS when C is not a
    multiple of PIXEL_ALIGN; else 0) and, for ROWS, the elements per pixel of X as the kernel
    reads it (C rounded up to PIXEL_ALIGN; else 0)."""
    path: int
    block_k: int
    steps: int
    row_pad: int = 0
    tap_pad: int = 0
    pixel: int = 0


def k_loop(channels: int, geo: ConvGeometry, block_k: int, pixels_dense: bool, h: int, w: int) -> KLoop:
    """The K walk for C = `channels` and a config's BLOCK_K (>= 32: 8-bit MMAs take K in 32s).
    C a multiple of 32: tap by tap, BLOCK_K the largest power of two dividing C (a 1x1 stride-1
    conv over dense pixels: the plain GEMM). Otherwise, with dilation 1 along W (or KW = 1):
    kernel row by kernel row (ROWS). Else (a dilation along W): tap by tap with each tap's C
    channels padded (masked in X, zeros in W) to a multiple of BLOCK_K. ROWS and padded TAPS
    take the BLOCK_K of 32, 64 or 128 (at most the config's) that pads least, then the larger;
    ROWS counts a kernel row over pixels of C rounded up to PIXEL_ALIGN elements."""
    assert block_k >= MIN_BLOCK_K, f"8-bit tensor-core dots take K in steps of {MIN_BLOCK_K}; BLOCK_K is {block_k}"
    if channels % MIN_BLOCK_K == 0:
        bk = _block_k(block_k, channels)
        path = PIXELS if geo.pointwise(h, w) and pixels_dense else TAPS
        return KLoop(path, bk, channels // bk)
    sizes = [bk for bk in (32, 64, 128) if bk <= block_k]
    if geo.dw == 1 or geo.kw == 1:
        pixel = -(-channels // PIXEL_ALIGN) * PIXEL_ALIGN
        row = geo.kw * pixel
        bk = min(sizes, key=lambda b: (-(-row // b) * b, -b))                # least padding, then larger
        pad = -(-row // bk) * bk
        return KLoop(ROWS, bk, pad // bk, row_pad=pad, tap_pad=pixel if pixel != channels else 0, pixel=pixel)
    bk = min(sizes, key=lambda b: (-(-channels // b) * b, -b))
    pad = -(-channels // bk) * bk
    return KLoop(TAPS, bk, pad // bk, tap_pad=pad)


def _block_k(block_k: int, channels: int) -> int:
    """The largest power of two <= block_k dividing `channels`."""
    bk = block_k
    while channels % bk:
        bk //= 2
    return bk


def framed_pixels(x: Tensor, pixel: int, geo: ConvGeometry, fill: Tensor | None = None) -> Tensor:
    """X channels-last and dense with `pixel` elements per pixel (channels C.. zero, as the packed
    weight is there, so every pixel starts 4-byte aligned: PIXEL_ALIGN) inside a zero
    frame of the conv's padding: geo.ph rows above, geo.pw columns left, and below and right as
    far as the last window reaches. The conv then reads it with no padding and no per-element mask.
    fill: X's zero point, the code the frame holds instead of 0 (frame.py)."""
    n, c, h, w = x.shape
    hp = max(geo.ph + h, (geo.oh - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1)
    wp = max(geo.pw + w, (geo.ow - 1) * geo.sw + (geo.kw - 1) * geo.dw + 1)
    return frame(x, pixel, hp, wp, geo.ph, geo.pw, fill=fill)


# int8 accumulators of magnitude below this convert to float32 by quantize.small_int_to_float
# rather than the I2F conversion (qconv.py's docstring, Accumulation).
SMALL_ACC = 2**22
_WMAX = derived_table()   # weight -> max |W| (kernels/memo.py)


def small_accumulator(k: int, w_q: Tensor, x_max: int = 128) -> bool:
    """Whether every int8 accumulator of a K-long reduction over W stays below SMALL_ACC in
    magnitude: K * x_max * max|W| < 2^22 (X's int8 values are at most 128 in magnitude; X less
    its zero point, at most 255). max|W| is read once per weight tensor; while a CUDA graph is
    being captured, a weight not read before counts as large (the I2F path, correct for any
    accumulator)."""
    wmax = read_once(_WMAX, w_q, "absmax", lambda t: int(t.to(torch.int32).abs().max()) if t.numel() else 0,
                     capturing=None)
    return wmax is not None and k * x_max * wmax < SMALL_ACC


_COLSUM = derived_table()   # weight -> sum of each output channel's values, int32 [OC]


def weight_sums(w_q: Tensor) -> Tensor:
    """sum over (C, KH, KW) of each output channel of int8 W [OC, C, KH, KW], int32 [OC], once per
    tensor: the zero-point correction of an X with a zero point (qconv.py)."""
    return derived(_COLSUM, w_q, "sums", lambda t: t.to(torch.int32).sum(dim=(1, 2, 3), dtype=torch.int32).contiguous())


ZERO_POINT_ROW = 256   # bytes: at least any config's BLOCK_K
_ZP_ROW = derived_table()   # zero point -> ZERO_POINT_ROW copies of it


def zero_point_row(x_zp: Tensor) -> Tensor:
    """ZERO_POINT_ROW copies of X's one-element zero point, once per tensor: what the TAPS walk's
    padded pixels read (qconv_load.tap_tile)."""
    return derived(_ZP_ROW, x_zp, "row", lambda t: t.reshape(1).expand(ZERO_POINT_ROW).contiguous())

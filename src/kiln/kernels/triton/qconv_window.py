"""kiln::QConv with its operands brought in by the tensor memory accelerator (config TMA=1): the
WINDOW walk of the implicit-GEMM convolution (qconv.py has the arithmetic and the other walks).

An output tile is not BLOCK_M consecutive pixels (whose taps lie at scattered rows of X) but a
box of BI images x BH output rows x BW output columns (BLOCK_M = BI*BH*BW, powers of two). For one
tap (kh, kw) and one block of BLOCK_K channels, the inputs such a box reads form a box of X as
well, strided by the conv's stride: one TMA copy, whose out-of-bounds elements (the padding at
negative or too large coordinates) the copy engine fills with zeros. The stride is taken out by
the view X5 [N, H/SH, SH, W/SW, SW*C] of channels-last X: input row ih = oh*SH + kh - PH is row
oh + (kh - PH) div SH of the view's second dim, phase (kh - PH) mod SH in its third, and the same
for columns, whose phase selects a block of C channels in the last dim. So every step is one
5-D TMA load of [BI, BH, 1, BW, BLOCK_K] bytes, reshaped to the MMA's [BLOCK_M, BLOCK_K] operand,
and one 2-D TMA load of the packed weight [OC, KH*KW*C]. No address arithmetic per pixel, no
masks, loads issued by one thread, and the software pipeline spans taps as in qconv.py's TAPS
walk. (The box's rows in shared memory are already that matrix's rows, but Triton folds the
reshape into a shared-memory view only for a box of one row (BI = BH = 1); a box of several rows
reaches the MMA through registers, which is why the pointer walks still win some 3x3 layers.)

It applies where C is a multiple of 32 (BLOCK_K divides C; 8-bit MMAs take K in 32s), H and W
are multiples of the strides, the dilation is 1, X is dense channels-last (or, for a conv of
stride 1 along W, channels-last pixels at any 16-byte multiple apart: qconv_s2d.py's overlapping
view, the box's rows then overlapping in X), and the copy engine's zero fill is the right
padding: X's zero point is 0 (kiln's symmetric quantization; ONNX Runtime's uint8 activations
after a Relu, whose range starts at 0) or the conv reads no padding (no pads, the last window
inside X). An X with a zero point or of type uint8 is shifted and corrected as in the pointer walks
(a padded tap reads code 0, which the correction over all taps makes a 0 term when the zero point
is 0), and the mid quantization of an explicitly quantized residual block runs in the epilogue
too. A 1x1 stride-1 conv takes the view [1, 1, 1, N*H*W, C]: a plain GEMM over rows of pixels.
The box (window_box) is the split of BLOCK_M that wastes the fewest computed pixels on the output's edges: ResNet-50's 56x56 outputs take 2x8x8 boxes, 28x28
8x4x4, 14x14 32x2x2, none wasted. Config IMAGES=1 (not a 1x1 stride-1 conv's flat row) takes
boxes of BLOCK_M images at one output pixel instead, from the view [H/SH, SH, W/SW, N, SW*C] (the
images next to the channels, strides permuted): the box is [1, 1, 1, BI, BLOCK_K], one row of
the operand per image, so the reshape to [BLOCK_M, BLOCK_K] only drops unit dims and the MMA
reads the box from shared memory as TMA wrote it (a multi-row box goes through registers:
`benchmarks/kernel_resources.py --operands`), and a 7x7 output wastes no pixel; images past N
(N not a multiple of BLOCK_M) are computed and masked. PERSISTENT=1: one program per SM walks the tiles, the loop nest
flattened so that the next tile's loads overlap this tile's epilogue.

The epilogue is qconv.py's (qconv_epilogue.py), on the box's pixels: Y and the residual are
written and read through their strides, pixels past the output's edges masked; or, with config
Y_TMA where the output is a flat row of pixels (a 1x1 stride-1 conv with channels-last Y: the
[N*H*W, OC] matrix), as one TMA box, as qgemm_tma.py's persistent GEMM does: no per-element
addresses or masks (the copy engine clips the box at M and OC), full-width transactions where the
MMA layout stores 1 or 2 bytes a thread at a time. The residual stays a pointer load: as a TMA
box, loaded at the epilogue, its wait was exposed and it lost up to 1.3x on ResNet-50's residual
layers (benchmarks/kernels_qconv_store.py, H200, 2026-11-27). Where the box does not fit in shared
memory beside the operand stages, or a row is not a multiple of 16 bytes, the pointer store runs.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.gemm import grouped_tile
from kiln.kernels.triton.qconv_epilogue import conv_epilogue
from kiln.kernels.triton.qconv_load import signed_x
from kiln.kernels.triton.qgemm_tile import dot8
from kiln.kernels.triton.qgemm_tma import descriptor_type, persistent_programs, store_boxes
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor
EIGHT_BIT = (torch.int8, torch.uint8, torch.float8_e4m3fn)
MAX_BOX = 256          # a TMA box holds at most 256 elements along each dim


@triton.jit
def _window_tile(x_desc, w_desc, tile, Y, N, OH, OW, OC, TILES_I, TILES_H, TILES_W, C, C_STEPS, KW, K_STEPS, PH, PW,
                 syn, syh, syw, syc, srn, srh, srw, src, XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1,
                 XZP, COLSUM, MS, MZP,
                 SH: tl.constexpr, SW: tl.constexpr, FP8_ACC: tl.constexpr, FLOAT_ACC: tl.constexpr,
                 ACC_MAGIC: tl.constexpr, WS_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                 HAS_RES: tl.constexpr, RES_Q: tl.constexpr, RES_INT: tl.constexpr, HAS_RZP: tl.constexpr,
                 ACT: tl.constexpr, OUT_KIND: tl.constexpr, HAS_OZP: tl.constexpr, QMIN: tl.constexpr,
                 QMAX: tl.constexpr, Y_TMA: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                 IMAGES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 X_U8: tl.constexpr, X_ZP: tl.constexpr, HAS_XZP: tl.constexpr, MID: tl.constexpr,
                 HAS_MZP: tl.constexpr, MQMIN: tl.constexpr, MQMAX: tl.constexpr):
    """One output tile: the K walk, then the epilogue, stored through pointers, or with Y_TMA (a
    flat row of pixels: BI = BH = 1, OW = N*H*W; Y a descriptor of [BLOCK_M, BLOCK_N] boxes of the
    [N*H*W, OC] matrix) as one TMA box at (ow0, off_n). X_ZP (1x1 stride-1 convs only, where no box
    reads padding): X's zero point subtracted as qconv.py's pointer walks do (uint8 X shifted into
    int8, za * sum(W[oc]) taken from the accumulator); MID: the epilogue's mid quantization."""
    BLOCK_M: tl.constexpr = BI * BH * BW
    tiles_m = TILES_I * TILES_H * TILES_W
    pid_m, pid_n = grouped_tile(tile, tiles_m * BLOCK_M, OC, BLOCK_M, BLOCK_N, GROUP_M)
    ti = pid_m // (TILES_H * TILES_W)
    rest = pid_m - ti * (TILES_H * TILES_W)
    th = rest // TILES_W
    n0 = ti * BI
    oh0 = th * BH
    ow0 = (rest - th * TILES_W) * BW
    off_n = pid_n * BLOCK_N
    if FLOAT_ACC:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for step in range(K_STEPS):
        tap = step // C_STEPS
        c0 = (step - tap * C_STEPS) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        # ih = oh*SH + kh - PH: the view's row oh + floor((kh - PH) / SH), phase (kh - PH) mod SH
        # (shifted by 8*SH so that the division is of a non-negative number: PH < 8*SH).
        dh = kh - PH + 8 * SH
        dw = kw - PW + 8 * SW
        if IMAGES:   # the view [H/SH, SH, W/SW, N, SW*C]: a box of BI images at one pixel
            a = x_desc.load([oh0 + dh // SH - 8, dh % SH, ow0 + dw // SW - 8, n0, (dw % SW) * C + c0])
        else:
            a = x_desc.load([n0, oh0 + dh // SH - 8, dh % SH, ow0 + dw // SW - 8, (dw % SW) * C + c0])
        a = signed_x(tl.reshape(a, [BLOCK_M, BLOCK_K]), X_U8)
        b = w_desc.load([off_n, step * BLOCK_K])                              # [BLOCK_N, BLOCK_K]
        acc = dot8(a, b.T, acc, FP8_ACC)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    rn = offs_n % OC
    if X_ZP:   # sum_k (a' - za) w = acc - za * sum_k w (qconv.py)
        za = (tl.load(XZP).to(tl.int32) if HAS_XZP else 0) - (128 if X_U8 else 0)
        acc -= za * tl.load(COLSUM + rn)[None, :]
    i = tl.arange(0, BLOCK_M)
    n = n0 + i // (BH * BW)
    oh = oh0 + (i // BW) % BH
    ow = ow0 + i % BW
    mask = ((n < N) & (oh < OH) & (ow < OW))[:, None] & (offs_n < OC)[None, :]
    y_off = (n * syn + oh * syh + ow * syw)[:, None] + offs_n[None, :] * syc
    r_off = (n * srn + oh * srh + ow * srw)[:, None] + rn[None, :] * src
    conv_epilogue(acc, rn, y_off, r_off, mask, Y, XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1,
                  FLOAT_ACC, ACC_MAGIC, WS_PER_CHANNEL, HAS_BIAS, HAS_RES, RES_Q, RES_INT, HAS_RZP, ACT,
                  OUT_KIND, HAS_OZP, QMIN, QMAX, Y_TMA, ow0, off_n, MS, MZP, MID, HAS_MZP, MQMIN, MQMAX)


@triton.jit
def window_kernel(x_desc, w_desc, Y, N, OH, OW, OC, TILES_I, TILES_H, TILES_W, C, C_STEPS, KW, K_STEPS, PH, PW,
                  programs, syn, syh, syw, syc, srn, srh, srw, src, XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1,
                  XZP, COLSUM, MS, MZP, SH: tl.constexpr, SW: tl.constexpr, FP8_ACC: tl.constexpr,
                  FLOAT_ACC: tl.constexpr,
                  ACC_MAGIC: tl.constexpr, WS_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_RES: tl.constexpr, RES_Q: tl.constexpr, RES_INT: tl.constexpr, HAS_RZP: tl.constexpr,
                  ACT: tl.constexpr, OUT_KIND: tl.constexpr, HAS_OZP: tl.constexpr, QMIN: tl.constexpr,
                  QMAX: tl.constexpr, PERSISTENT: tl.constexpr, Y_TMA: tl.constexpr, BI: tl.constexpr, BH: tl.constexpr,
                  BW: tl.constexpr, IMAGES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr,
                  X_U8: tl.constexpr, X_ZP: tl.constexpr, HAS_XZP: tl.constexpr, MID: tl.constexpr,
                  HAS_MZP: tl.constexpr, MQMIN: tl.constexpr, MQMAX: tl.constexpr, PDL: tl.constexpr = False):
    """One tile per program, or PERSISTENT: `programs` programs take tiles i, i + programs, ..."""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    if PERSISTENT:
        tiles = TILES_I * TILES_H * TILES_W * tl.cdiv(OC, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
            _window_tile(x_desc, w_desc, tile, Y, N, OH, OW, OC, TILES_I, TILES_H, TILES_W, C, C_STEPS, KW,
                         K_STEPS, PH, PW, syn, syh, syw, syc, srn, srh, srw, src, XS, WS, BIAS, sb, RES, RS, RZP,
                         OS, OZP, p0, p1, XZP, COLSUM, MS, MZP, SH, SW, FP8_ACC, FLOAT_ACC, ACC_MAGIC,
                         WS_PER_CHANNEL, HAS_BIAS, HAS_RES, RES_Q, RES_INT, HAS_RZP, ACT, OUT_KIND, HAS_OZP, QMIN,
                         QMAX, Y_TMA, BI, BH, BW, IMAGES, BLOCK_N, BLOCK_K, GROUP_M, X_U8, X_ZP, HAS_XZP, MID,
                         HAS_MZP, MQMIN, MQMAX)
    else:
        _window_tile(x_desc, w_desc, tl.program_id(0), Y, N, OH, OW, OC, TILES_I, TILES_H, TILES_W, C, C_STEPS,
                     KW, K_STEPS, PH, PW, syn, syh, syw, syc, srn, srh, srw, src, XS, WS, BIAS, sb, RES, RS, RZP,
                     OS, OZP, p0, p1, XZP, COLSUM, MS, MZP, SH, SW, FP8_ACC, FLOAT_ACC, ACC_MAGIC, WS_PER_CHANNEL,
                     HAS_BIAS, HAS_RES, RES_Q, RES_INT, HAS_RZP, ACT, OUT_KIND, HAS_OZP, QMIN, QMAX, Y_TMA, BI, BH,
                     BW, IMAGES, BLOCK_N, BLOCK_K, GROUP_M, X_U8, X_ZP, HAS_XZP, MID, HAS_MZP, MQMIN, MQMAX)


# --- host side ------------------------------------------------------------------------------------


def window_box(n: int, oh: int, ow: int, block_m: int) -> tuple[int, int, int]:
    """(BI, BH, BW), powers of two with BI*BH*BW = block_m, each at most MAX_BOX: the split that
    computes the fewest pixels past the output's edges, then the widest rows (longer runs of X
    per box row), then the most rows."""
    best = None
    bw = 1
    while bw <= min(block_m, MAX_BOX):
        bh = 1
        while bw * bh <= block_m and bh <= MAX_BOX:
            bi = block_m // (bw * bh)
            if bi <= MAX_BOX:
                computed = -(-n // bi) * bi * -(-oh // bh) * bh * -(-ow // bw) * bw
                key = (computed, -bw, -bh)
                if best is None or key < best[0]:
                    best = (key, (bi, bh, bw))
            bh *= 2
        bw *= 2
    assert best is not None, f"no TMA box of {block_m} pixels"
    return best[1]


def window_applies(x: Tensor, wp: Tensor, geo, pointwise: bool, dense: bool, block_k: int,  # noqa: ANN001
                   pads_wrong: bool = False) -> bool:
    """Whether the WINDOW walk takes this conv (module docstring): 8-bit X and packed weight wp
    [OC, K] alike (or uint8 X, int8 wp), C a multiple of BLOCK_K (itself >= 32), no dilation, H
    and W multiples of the strides (unless a 1x1 stride-1 conv over dense pixels), dense
    channels-last X and a contiguous wp with 16-byte aligned bases, the padding below 8 strides,
    and Triton with host TMA descriptors. Not where the copy engine's zero fill would be the wrong
    padding (pads_wrong: X's zero point is not 0 and some tap reads padding)."""
    n, c, h, wd = x.shape
    alike = wp.dtype == x.dtype or (x.dtype == torch.uint8 and wp.dtype == torch.int8)
    if x.dtype not in EIGHT_BIT or not alike or c % block_k or descriptor_type() is None or pads_wrong:
        return False
    if not wp.is_contiguous() or wp.data_ptr() % 16:
        return False
    # Channels-last: dense, or (stride 1 along W: no phase shares the last dim with the channels)
    # pixels 16-byte aligned at any distance, even overlapping (qconv_s2d.py's folded view).
    aligned = all(x.stride(i) * x.element_size() % 16 == 0 for i in (0, 2, 3))
    channels_last = x.stride(1) == 1 and ((x.stride(3) == c and dense) or (geo.sw == 1 and aligned and not pointwise))
    if not channels_last or x.data_ptr() % 16 or (geo.dh, geo.dw) != (1, 1):
        return False
    if pointwise:
        return True
    return h % geo.sh == 0 and wd % geo.sw == 0 and geo.ph < 8 * geo.sh and geo.pw < 8 * geo.sw


def x_descriptor(x: Tensor, geo, pointwise: bool, box: tuple[int, int, int], block_k: int,  # noqa: ANN001, ANN201
                 images: bool = False):
    """The 5-D TMA descriptor of X's strided view [N, H/SH, SH, W/SW, SW*C] (module docstring), or
    of [1, 1, 1, N*H*W, C] for a 1x1 stride-1 conv; the box [BI, BH, 1, BW, BLOCK_K]. `images`:
    the images moved next to the channels, [H/SH, SH, W/SW, N, SW*C], and the box [1, 1, 1, BI,
    BLOCK_K]: BI images at one pixel (the module docstring's IMAGES boxes)."""
    n, c, h, w = x.shape
    bi, bh, bw = box
    block = [bi, bh, 1, bw, block_k]
    if pointwise:
        shape = [1, 1, 1, n * h * w, c]
        strides = [n * h * w * c, n * h * w * c, n * h * w * c, c, 1]
    else:
        sn, _, sh, sw = x.stride()
        shape = [n, h // geo.sh, geo.sh, w // geo.sw, geo.sw * c]
        strides = [sn, geo.sh * sh, sh, geo.sw * sw, 1]
        if images:   # the images dim moved next to the channels
            shape, strides, block = shape[1:4] + [n, shape[4]], strides[1:4] + [sn, 1], [1, 1, 1, bi, block_k]
    return descriptor_type()(x, shape, strides, block)


def launch_window(x: Tensor, wp: Tensor, y: Tensor, y_out: Tensor, res: Tensor, geo, flat_rows: bool,  # noqa: ANN001
                  cfg: dict, bk: int, ops: dict, flags: dict, zp: dict, mid: dict) -> None:
    """Launch window_kernel for X (channels-last, window_applies), the packed weight wp [OC, K],
    Y (and y_out, the view the kernel stores into), the residual (or Y), BLOCK_K = bk (the config's,
    or the largest power of two below it that divides C: qconv_plan.k_loop), with the epilogue's
    operands `ops` and switches `flags`, X's zero point `zp` (XZP, COLSUM, X_U8, X_ZP, HAS_XZP)
    and the mid quantization `mid` as qconv.py's launcher makes them. flat_rows: a 1x1
    stride-1 conv with Y and the residual dense channels-last, run as one row of N*H*W pixels."""
    n, c, h, w = x.shape
    oc = wp.shape[0]
    bm, bn = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"])
    if flat_rows:
        dims, ys, rs = (1, 1, n * h * w), (0, 0, y.stride(3)), (0, 0, res.stride(3))
    else:
        dims, ys, rs = (n, geo.oh, geo.ow), (y.stride(0), y.stride(2), y.stride(3)), \
            (res.stride(0), res.stride(2), res.stride(3))
    images = bool(cfg.get("IMAGES")) and not flat_rows
    box = (bm, 1, 1) if images else window_box(*dims, bm)
    tiles = tuple(-(-d // b) for d, b in zip(dims, box))
    count = tiles[0] * tiles[1] * tiles[2] * triton.cdiv(oc, bn)
    persistent = bool(cfg.get("PERSISTENT"))
    programs = persistent_programs(count, x.device, cfg) if persistent else count
    res_bytes = res.element_size() if flags["HAS_RES"] else 0
    y_arg, y_tma = output_boxes(y_out, cfg, bk, 1, res_bytes) if flat_rows else (y_out, False)
    assert not y_tma or box[:2] == (1, 1), "a TMA-stored tile is a run of pixels (the kernel stores it at (ow0, n))"
    window_kernel[(programs,)](
        x_descriptor(x, geo, flat_rows, box, bk, images), descriptor_type().from_tensor(wp, [bn, bk]), y_arg, *dims, oc,
        *tiles, c, c // bk, geo.kw, geo.kh * geo.kw * (c // bk), geo.ph, geo.pw, programs,
        *ys, y.stride(1), *rs, res.stride(1), **ops, **zp, **mid,
        SH=1 if flat_rows else geo.sh, SW=1 if flat_rows else geo.sw, PERSISTENT=persistent, Y_TMA=y_tma,
        BI=box[0], BH=box[1], BW=box[2], IMAGES=images, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=int(cfg["GROUP_M"]),
        num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]), **flags, **launch_options(x))


def output_boxes(y_out: Tensor, cfg: dict, bk: int, operand_bytes: int, residual_bytes: int) -> tuple[Any, bool]:
    """(Y as a conv kernel takes it, whether it is a TMA descriptor): with config Y_TMA, the
    [BLOCK_M, BLOCK_N] boxes of channels-last dense y_out's [N*H*W, OC] matrix where they fit
    beside the kernel's operand stages and the residual tile's (residual_bytes an element, 0
    without one) move from the layout it is loaded in to the accumulator's, which also goes
    through shared memory (qgemm_tma.store_boxes), else y_out itself. Compiled for sm_90, the
    int8 128x256x128 persistent tile with an int8 residual takes 213,016 bytes with an int8 Y and
    245,784 with a float16 one, past the 232,448 a block may have (the tuner saw the launch fail)."""
    if not cfg.get("Y_TMA"):
        return y_out, False
    rows = y_out.permute(0, 2, 3, 1).view(-1, y_out.shape[1])    # a view (never a copy the kernel would fill)
    extra = int(cfg["BLOCK_M"]) * int(cfg["BLOCK_N"]) * residual_bytes
    y_desc, _, boxed = store_boxes({**cfg, "BLOCK_K": bk}, operand_bytes, rows, rows, False, extra_bytes=extra)
    return (y_desc, True) if boxed else (y_out, False)

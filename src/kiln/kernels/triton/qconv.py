"""kiln::QConv in Triton: an implicit-GEMM INT8 / FP8 2-D convolution over channels-last tensors.

The oracle is kiln::QConv (kernels/reference/quantized.py): exact products, one sum, the
float epilogue, one final rounding. The convolution is computed as the GEMM

    Y[m, oc] = sum_k A[m, k] * B[k, oc]      m = (n, oh, ow): M = N*OH*OW output pixels
                                             k = (kh, kw, c): K = KH*KW*C
    A[m, k]  = X[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]   (0 outside the image)
    B[k, oc] = W[oc, c, kh, kw]

A is never built ("implicit GEMM"): the program that computes a [BLOCK_M, BLOCK_N] tile of Y
loads, per K step, BLOCK_M rows x[n, ih, iw, c0:c0+BLOCK_K]. In channels-last memory each
row is one contiguous run of BLOCK_K bytes (16-byte vector loads); a pixel whose tap falls
in the padding is masked to 0, which is exact because X's zero point is 0 (DQ(0) = 0, the
value the float Conv pads with). W is packed once per weight tensor as [OC, KH*KW*C],
K-contiguous (W's own channels-last order): the operand order 8-bit tensor-core MMAs read
without a transpose. Y's tile is [pixels, channels]; in channels-last Y that is a row-major
[M, OC] matrix, so the store is a plain 2-D store.

The K loop is one flat loop over K steps (step -> kernel position by scalar arithmetic)
rather than nested loops over kh, kw and c, so that the software pipeline (num_stages)
spans taps: a 3x3 conv over 64 channels is 9 steps of one tap each, not 9 loops of one
step. Three walks (the constexpr PATH, chosen by `k_loop`), TAPS in two forms:
- TAPS, C a multiple of 32: a step is one tap's block of BLOCK_K channels; BLOCK_K is the
  largest power of two <= the config's that divides C, so no step straddles two taps and
  no load needs a channel mask (only the padding mask, per pixel).
- PIXELS, a 1x1 stride-1 unpadded conv over densely stored pixels: a plain GEMM with
  A = X viewed as [M, C], rows addressed as m * C, no pixel arithmetic and no masks.
- ROWS, C not a multiple of 32 (ResNet's stem: C = 3) with dilation 1 along W: for one
  kh, the KW taps of all channels are one contiguous run of KW*PIX elements of channels-last
  X, PIX = C rounded up to 4, so a step is a BLOCK_K block of that run (tap = element // PIX),
  and W is packed with each kernel row zero-padded to a multiple of BLOCK_K. Where C is not a
  multiple of 4 (or X not dense) the launcher copies X into pixels of PIX elements (channels
  C.. zero; W has zeros there too) inside a zero frame of the conv's padding: every tap then
  lies inside the copy (INSIDE) and a load is masked only past KW*PIX, one predicate per
  column. A dense X of PIX channels is read in place, masked per element at the image's edge.
  Either mask is constant over each 4-byte word, so the loads are words, not bytes.
  A 7x7 stem over 3 channels is 7 steps of 32 (28 used), where taps would be 49 of 32.
- TAPS over padded channels, C not a multiple of 32 with a dilation along W (no ROWS): each
  tap's C channels are walked in blocks of BLOCK_K, the last one masked past C in X (MASK_C)
  and zero-padded in the packed W ([OC, KH*KW*C'], C' = C rounded up to BLOCK_K).
A fourth walk, WINDOW (config TMA=1, qconv_window.py), brings X in by TMA boxes of several
images, rows and columns (IMAGES=1: of BLOCK_M images at one pixel, which the MMA reads from
shared memory) where C is a multiple of 32 and the strides divide H and W; elsewhere a
TMA config runs the same tile through the walks above. The Y_TMA key stores the output tile as
one TMA box where the output is a flat [N*OH*OW, OC] matrix (channels-last Y: any pointer walk,
whose tile is BLOCK_M consecutive output pixels; WINDOW where its box is a run of pixels). The
S2D key folds a strided conv over few channels space to depth first (qconv_s2d.py: the stem as
a 4x1 stride-1 conv over 64 channels of overlapping pixels, walked by TAPS or WINDOW).
BLOCK_K is at least 32 on every path: 8-bit tensor-core MMAs take K in 32s (a 16-deep dot
does not compile for int8/fp8 on Hopper, though Triton's interpreter would run it). The host
decides the window, the weight packing and the walk (qconv_plan.py); this file is the kernel
and its launcher.

Accumulation. int8 x int8: int32 on the tensor cores, exact (|sum| < K * 2^14). The
epilogue needs it in float32: where every sum is below 2^22 in magnitude (K * 128 * max|W| <
2^22: ResNet's 1x1 convs over up to 256 channels, its stem) as the bits of acc + 1.5 * 2^23
read as a float32 minus 1.5 * 2^23, exact and at full ALU rate; otherwise by the I2F
conversion instruction, which Hopper runs at an eighth of that rate or less (in the epilogue
of a short-K conv it is most of the per-element work; fp8 accumulates in float32 already).
float8 e4m3 x e4m3: float32 on the tensor cores (sm_89+). Hopper's fp8 MMA is reported not to add
in full float32 (about 14 bits kept after aligning the products and the accumulator to the
largest exponent; DeepSeek-V3's measurement, not re-measured here), so the error of each
step grows with the running sum. The config key
FP8_ACC bounds that: every FP8_ACC products (32 = one wgmma instruction, up to BLOCK_K) are
summed from zero in the MMA's precision and then added to a separate float32 accumulator
(tl.dot's max_num_imprecise_acc), so the loss is relative to one partial sum of FP8_ACC
products, not to the whole dot product; the price is a second accumulator (registers) and
one add per partial sum. FP8_ACC = 0 lets the hardware accumulate throughout: fastest,
least exact. The tuner keeps a config only when its output agrees with the reference
within compiler/tolerance.py, so the space offers all three.

Epilogue, in float32 on the accumulator tile, in the store: acc * (x_scale * w_scale[oc])
+ bias[oc] + residual (an 8-bit residual as (R - residual_zp) * residual_scale), the
activation (gemm.py's, the fused.ACTIVATIONS vocabulary), then a cast to the float output
(x_scale's dtype) or the requantization, quantize.py's requantize as in qgemm.py:
v * (1 / out_scale), the reciprocal correctly rounded once per program (an IEEE division per element is a long instruction sequence with a slow-path call, unrolled
over the tile; with it an int8 output took up to 4x the float16 output's time); rounded
half to even by one float32 add of 1.5*2^23, plus out_zp, saturated to the type's range;
float8 outputs are encoded as e4m3 bits (nearest, ties to even, saturating at +-448) and
stored through a uint8 view of Y, exact on every backend (no float8 cast). The reference
rounds once from float64; this epilogue rounds in float32, which moves a requantized output
by one step only next to a tie (the tuner's tolerance allows that). With mid_scale (an
explicitly quantized residual block, passes/fuse_qdq_residual.py) the value before the residual
is rounded to the conv's own codes and back the same way.
The residual is read through its own strides (any memory format; broadcast dims have
stride 0). Y has the reference's logical shape [N, OC, OH, OW] and is allocated
channels-last (as tactics/conv.py's outputs: a channels-last region stays so), or NCHW
on request (for graphs that run NCHW: X is then converted on every call).

16-bit float operands (float16/bfloat16 X and W, unit scales, a float output) run the same kernel
with a float32 accumulator: conv.py's fp16/bf16 convolution (BLOCK_K up to 64 there, qconv_plan's
FLOAT_CONFIGS: a stage holds twice the bytes).

Zero points: W's must be absent or 0 (the launcher checks once per tensor and raises). X's may
be anything, uint8 X (ONNX Runtime's asymmetric activations; W int8) or int8: uint8 loads shift by
128 into int8 (exact), padding lanes take the zero point's code, and za * sum(W[oc]) leaves the
int32 accumulator: sum (x - zp) w exactly (qconv_load.py); the framing copy (and the folded
walk's) frames such an X with its zero point. The WINDOW walk takes it where the copy engine's
zero fill is right (a zero point of 0, or no padding read: qconv_window.py).
Offsets are int32: 2**31 elements or more are refused.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.ir import dtypes
from kiln.kernels.memo import all_zero
from kiln.kernels.reference.quantized import output_type
from kiln.kernels.triton.activation import activation_code
from kiln.kernels.triton.gemm import grouped_tile
from kiln.kernels.triton.qconv_checks import (FLOAT_OUTPUTS, REQUANT_RANGES, check_mid, check_operands,
                                              check_residual, require_zero)
from kiln.kernels.triton.qconv_epilogue import conv_epilogue
from kiln.kernels.triton.qconv_load import signed_x, tap_tile, x_tile
from kiln.kernels.triton.qconv_plan import (FLOAT_CONFIGS, FP8_CONFIGS, INT8_CONFIGS, PIXELS, ROWS, conv_geometry,  # noqa: F401
                                            framed_pixels, k_loop, packed_weight, small_accumulator, weight_sums,
                                            zero_point_row)
from kiln.kernels.triton.qgemm_tile import dot8
from kiln.kernels.triton.qgemm_space import fp8_promotion
from kiln.kernels.triton.qconv_s2d import space_to_depth
from kiln.kernels.triton.qconv_window import launch_window, output_boxes, window_applies
from kiln.kernels.triton.quantize import needed_zero_point, quantize_linear
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

OUT_FLOAT, OUT_INT, OUT_FP8 = 0, 1, 2

@triton.jit
def _qconv_kernel(
        X, W, Y, M, OC, C, H, IW, OH, OW, KTOT, K_STEPS, C_STEPS, KW,
        sxn, sxh, sxw, srn, src, srh, srw, syn, syc, syh, syw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1, MS, MZP, XZP, COLSUM, ZPROW,
        PATH: tl.constexpr, MASK_C: tl.constexpr, PIX: tl.constexpr, ROW: tl.constexpr, INSIDE: tl.constexpr,
        FLOAT_ACC: tl.constexpr, FP8_ACC: tl.constexpr, ACC_MAGIC: tl.constexpr, X_U8: tl.constexpr,
        X_ZP: tl.constexpr, HAS_XZP: tl.constexpr, ZP_ROW: tl.constexpr,
        WS_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RES_Q: tl.constexpr,
        RES_INT: tl.constexpr,
        HAS_RZP: tl.constexpr, FLAT_OUT: tl.constexpr, Y_TMA: tl.constexpr,
        ACT: tl.constexpr, OUT_KIND: tl.constexpr, HAS_OZP: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        MID: tl.constexpr, HAS_MZP: tl.constexpr, MQMIN: tl.constexpr, MQMAX: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    # Grouped tile order: GROUP_M tile rows are walked channel block by channel block, so
    # consecutive programs reuse the same input rows while they sit in L2.
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, OC, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                         # [BLOCK_M] pixels
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                         # [BLOCK_N] channels
    offs_k = tl.arange(0, BLOCK_K)                                           # [BLOCK_K]
    # Wrapped indices: rows/channels past the edge re-read valid memory and are never stored.
    rm = offs_m % M
    rn = offs_n % OC
    w_ptrs = W + rn[None, :] * KTOT + offs_k[:, None]                        # [BLOCK_K, BLOCK_N]
    if FLOAT_ACC:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    # X's zero point in the signed domain (uint8 X: values and zero point shifted by 128); X_ZP: a
    # correction is due (uint8 X, or a non-zero int8 zero point). Padding taps read za: 0 once dequantized.
    za = 0
    if X_ZP:
        za = (tl.load(XZP).to(tl.int32) if HAS_XZP else 0) - (128 if X_U8 else 0)
    if PATH == 0:
        # PIXELS: a 1x1 stride-1 conv over dense pixels is X [M, C] @ B.
        a_ptrs = X + rm[:, None] * sxw + offs_k[None, :]                    # [BLOCK_M, BLOCK_K]
        for _ in range(K_STEPS):
            a = signed_x(tl.load(a_ptrs), X_U8)
            b = tl.load(w_ptrs)
            acc = dot8(a, b, acc, FP8_ACC)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    else:
        ow = rm % OW
        oh = (rm // OW) % OH
        n = rm // (OW * OH)
        ih0 = oh * stride_h - pad_h                                          # [BLOCK_M] tap (0, 0)
        iw0 = ow * stride_w - pad_w
        row0 = n * sxn + ih0 * sxh + iw0 * sxw                               # may point into the padding
        for step in range(K_STEPS):
            if PATH == 1:
                # TAPS: step = (kh, kw, channel block); one tap's BLOCK_K channels per row
                # (MASK_C: the tap's last block runs past C, masked; W is zero-padded there).
                tap = step // C_STEPS
                c0 = (step - tap * C_STEPS) * BLOCK_K
                kh = tap // KW
                kw = tap - kh * KW
                ih = ih0 + kh * dil_h
                iw = iw0 + kw * dil_w
                rows = row0 + (kh * dil_h) * sxh + (kw * dil_w) * sxw + c0
                if INSIDE:   # every tap lies inside X (no padding reached): no per-pixel mask
                    if MASK_C:
                        a = x_tile(X + rows[:, None] + offs_k[None, :], (c0 + offs_k < C)[None, :], X_U8, X_ZP,
                                    za)
                    else:
                        a = signed_x(tl.load(X + rows[:, None] + offs_k[None, :]), X_U8)
                else:
                    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < IW)    # [BLOCK_M]
                    a = tap_tile(X, rows, inside, offs_k, c0 + offs_k < C, ZPROW, X_U8, X_ZP, ZP_ROW, MASK_C, za)
            else:
                # ROWS (small C): step = (kh, block of the kernel row). For one kh, the taps
                # kw = 0..KW-1 of all pixels are one contiguous run of ROW = KW*PIX elements of
                # X (dilation 1 along W, pixels PIX apart, PIX = C rounded up to 4 with zero
                # channels); element j is tap j // PIX. PIX and ROW are constants and every row
                # starts at a multiple of 4 bytes, so the mask is constant over 4 elements and
                # each load is a 32-bit word (single bytes otherwise: one load instruction per
                # element, which bound ResNet's stem).
                # INSIDE: every tap lies inside X (X carries the conv's zero padding as a frame,
                # the launcher's copy, or the conv reaches no padding), so only the columns past
                # ROW are masked: one predicate per column, none per element.
                kh = step // C_STEPS
                j = (step - kh * C_STEPS) * BLOCK_K + offs_k                 # [BLOCK_K]
                rows = tl.multiple_of(row0 + (kh * dil_h) * sxh, 4)
                if INSIDE:
                    a = x_tile(X + rows[:, None] + j[None, :], (j < ROW)[None, :], X_U8, X_ZP, za)
                else:
                    ih = ih0 + kh * dil_h
                    iw = iw0[:, None] + (j // PIX)[None, :]                  # [BLOCK_M, BLOCK_K]
                    inside = ((ih >= 0) & (ih < H))[:, None] & (iw >= 0) & (iw < IW) & (j < ROW)[None, :]
                    a = x_tile(X + rows[:, None] + j[None, :], inside, X_U8, X_ZP, za)
            b = tl.load(w_ptrs)
            acc = dot8(a, b, acc, FP8_ACC)
            w_ptrs += BLOCK_K

    if X_ZP:   # sum_k (a' - za) w = acc - za * sum_k w: W's column sums over the packed K (pads are 0)
        acc -= za * tl.load(COLSUM + rn)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < OC)[None, :]                    # [BLOCK_M, BLOCK_N]
    if FLAT_OUT:
        # Y (and the residual) channels-last and dense: a row-major [M, OC] matrix.
        y_off = rm[:, None] * OC + offs_n[None, :]
        r_off = y_off
    else:
        ow_o = rm % OW
        oh_o = (rm // OW) % OH
        n_o = rm // (OW * OH)
        y_off = (n_o * syn + oh_o * syh + ow_o * syw)[:, None] + offs_n[None, :] * syc
        r_off = (n_o * srn + oh_o * srh + ow_o * srw)[:, None] + rn[None, :] * src
    # The epilogue on the float32 accumulator (module docstring); Y_TMA (FLAT_OUT only): Y is a
    # descriptor of the [M, OC] matrix's boxes.
    conv_epilogue(acc, rn, y_off, r_off, mask, Y, XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1,
                  FLOAT_ACC, ACC_MAGIC, WS_PER_CHANNEL, HAS_BIAS, HAS_RES, RES_Q, RES_INT, HAS_RZP, ACT,
                  OUT_KIND, HAS_OZP, QMIN, QMAX, Y_TMA, pid_m * BLOCK_M, pid_n * BLOCK_N, MS, MZP, MID, HAS_MZP,
                  MQMIN, MQMAX)


# --- the launcher ---------------------------------------------------------------------------------


def qconv(x_q: Tensor, w_q: Tensor, x_scale: Tensor, x_zp: Tensor | None, w_scale: Tensor,
          w_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
          out_scale: Tensor | None = None, out_zp: Tensor | None = None, residual_scale: Tensor | None = None,
          residual_zp: Tensor | None = None, x_quant_scale: Tensor | None = None, mid_scale: Tensor | None = None,
          mid_zp: Tensor | None = None, *, auto_pad: str = "NOTSET",
          dilations: Sequence[int] | None = None, group: int = 1, kernel_shape: Sequence[int] | None = None,
          pads: Sequence[int] | None = None, strides: Sequence[int] | None = None, activation: str = "",
          activation_params: Sequence[float] = (), out_dtype: int = 0, x_dtype: int = 0,
          config: dict[str, Any] | None = None, channels_last_out: bool = True) -> Tensor:
    """Y = [Q](act(Conv(DQ(X), DQ(W)) + bias + residual)), the reference kiln::QConv's contract,
    for X [N, C, H, W] int8, uint8 (W int8) or float8_e4m3fn in any memory format (channels-last is read in
    place, others are converted); an 8-bit residual with residual_scale (and residual_zp) is
    dequantized in the epilogue. Y is channels-last, or contiguous NCHW if not channels_last_out.
    With x_dtype, X is float and quantized first (the reference's contract: with x_quant_scale,
    else x_scale): by the folded walk's framing copy on the way (S2D), else by the QuantizeLinear
    kernel."""
    out = output_type(x_scale, out_scale, out_zp, out_dtype)
    quantize_x = None
    if x_dtype:
        target = dtypes.from_onnx(x_dtype).torch
        assert x_q.dtype in FLOAT_OUTPUTS and \
            (target == w_q.dtype or (target, w_q.dtype) == (torch.uint8, torch.int8)), \
            f"x_dtype: float X quantized to W's type (or uint8, W int8); got X {x_q.dtype}, {target}, W {w_q.dtype}"
        q_scale = x_scale if x_quant_scale is None else x_quant_scale
        if config is not None and config.get("S2D"):
            quantize_x = (q_scale, x_zp, target)
        else:
            x_q = quantize_linear(x_q, q_scale, x_zp, output_dtype=x_dtype)
    x_type = x_q.dtype if quantize_x is None else quantize_x[2]              # X as the kernel reads it
    check_operands(x_q, w_q, x_scale, w_scale, bias, group, out, out_scale is not None, x_type)
    check_residual(residual, residual_scale, residual_zp)
    check_mid(mid_scale, mid_zp)
    require_zero(w_zp, "w_zp")
    # X's zero point: subtracted by the kernel (uint8 X always: its values are shifted by 128).
    assert x_zp is None or (x_zp.dtype == x_type and x_zp.numel() == 1), "x_zp: one value of X's type"
    x_u8 = x_type == torch.uint8
    zp_nonzero = x_zp is not None and not all_zero(x_zp)
    x_corr = x_u8 or zp_nonzero
    out_zp = needed_zero_point(out_zp)
    residual_zp = needed_zero_point(residual_zp)
    code, p0, p1 = activation_code(activation, activation_params)
    is_fp8 = x_type == torch.float8_e4m3fn
    float_acc = x_type not in (torch.int8, torch.uint8)                      # float8 and 16-bit floats
    space = FP8_CONFIGS if is_fp8 else INT8_CONFIGS if not float_acc else FLOAT_CONFIGS
    cfg = dict(space[0] if config is None else config)
    geo = conv_geometry(x_q.shape, w_q.shape, auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                        pads=pads, strides=strides)
    # The framing copies hold X's zero point where X has one (quantize_x: the code of 0 anyway).
    fill = x_zp if x_corr and quantize_x is None else None
    if cfg.get("S2D"):   # folded space to depth: a stride-1 conv over many channels (qconv_s2d.py)
        x_q, w_q, geo = space_to_depth(x_q, w_q, geo, quantize_x, fill)
    n, c, h, w = x_q.shape
    oc = w_q.shape[0]
    # X channels-last (once per region: converted here on the region's first conv), except where the
    # ROWS walk copies it into framed pixels anyway (C not a multiple of 4): that copy reads any layout.
    copied = k_loop(c, geo, int(cfg["BLOCK_K"]), True, h, w)
    copied_anyway = copied.path == ROWS and copied.pixel != c
    x = x_q if x_q.stride(1) == 1 or copied_anyway else x_q.contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last_out else torch.contiguous_format
    y = torch.empty((n, oc, geo.oh, geo.ow), dtype=out.torch, device=x.device, memory_format=fmt)
    m = n * geo.oh * geo.ow
    if m == 0 or oc == 0:
        return y
    assert y.numel() < 2**31, "an output of 2**31 elements or more overflows int32 offsets"
    dense = x.stride(2) == w * x.stride(3) and x.stride(0) == h * x.stride(2)
    loop = k_loop(c, geo, int(cfg["BLOCK_K"]), dense, h, w)
    # ROWS reads (w, c) runs of pixels of PIX elements: where X must be copied into that form
    # anyway (C not a multiple of 4: the stem), the copy also frames it with the padding.
    framed = loop.path == ROWS and not (loop.pixel == c and dense and x.stride(3) == c)
    if framed:
        x = framed_pixels(x, loop.pixel, geo, fill)
    h_in, w_in, ph, pw = (x.shape[2], x.shape[3], 0, 0) if framed else (h, w, geo.ph, geo.pw)
    # Every tap inside X: no pad before, and the last window ends within X (the folded stem, the
    # 1x1 stride-2 convs, a framed copy): the pointer walks then load without per-pixel masks.
    inside = ph == 0 and pw == 0 and (geo.oh - 1) * geo.sh + (geo.kh - 1) * geo.dh < h_in and \
        (geo.ow - 1) * geo.sw + (geo.kw - 1) * geo.dw < w_in
    bk = loop.block_k
    wp = packed_weight(w_q, loop.row_pad, loop.tap_pad)                      # [OC, K]
    res = y if residual is None else residual.expand(y.shape)
    flat = channels_last_out and (residual is None or res.stride() == y.stride())
    b = None if bias is None else bias.reshape(-1)
    kind = OUT_FLOAT if out_scale is None else (OUT_FP8 if out.name == "float8_e4m3fn" else OUT_INT)
    qmin, qmax = REQUANT_RANGES.get(out.name, (0, 0))
    y_out = y.view(torch.uint8) if kind == OUT_FP8 else y                    # float8: the kernel stores bits
    # The epilogue's operands and switches, alike for both kernels.
    ops = dict(XS=x_scale, WS=w_scale, BIAS=x_scale if b is None else b,
               sb=0 if b is None or b.numel() == 1 else b.stride(0), RES=res,
               RS=x_scale if residual_scale is None else residual_scale,
               RZP=x_scale if residual_zp is None else residual_zp, OS=x_scale if out_scale is None else out_scale,
               OZP=x_scale if out_zp is None else out_zp, p0=p0, p1=p1)
    flags = dict(FLOAT_ACC=float_acc, FP8_ACC=fp8_promotion(cfg, bk) if is_fp8 else 0,
                 ACC_MAGIC=not float_acc and small_accumulator(c * geo.kh * geo.kw, w_q, 255 if x_corr else 128),
                 WS_PER_CHANNEL=w_scale.numel() > 1, HAS_BIAS=b is not None, HAS_RES=residual is not None,
                 RES_Q=residual_scale is not None, HAS_RZP=residual_zp is not None,
                 RES_INT=residual is not None and residual.dtype in (torch.int8, torch.uint8),
                 ACT=code, OUT_KIND=kind, HAS_OZP=out_zp is not None, QMIN=qmin, QMAX=qmax)
    # The mid quantization: its operands and switches.
    mid = dict(MS=x_scale if mid_scale is None else mid_scale, MZP=x_scale if mid_zp is None else mid_zp,
               MID=mid_scale is not None, HAS_MZP=mid_zp is not None,
               MQMIN=-128 if mid_zp is not None and mid_zp.dtype == torch.int8 else 0,
               MQMAX=127 if mid_zp is not None and mid_zp.dtype == torch.int8 else 255)
    # X's zero point (x_corr: uint8 X, or a non-zero int8 zero point), for both kernels.
    zp = dict(XZP=x_scale if x_zp is None else x_zp, COLSUM=weight_sums(w_q) if x_corr else x_scale,
              X_U8=x_u8, X_ZP=x_corr, HAS_XZP=x_zp is not None)
    # The copy engine pads with code 0: wrong where X's zero point is not 0 and a tap reads padding.
    pads_wrong = not inside and zp_nonzero
    if cfg.get("TMA") and window_applies(x, wp, geo, loop.path == PIXELS, dense, bk, pads_wrong):
        launch_window(x, wp, y, y_out, res, geo, loop.path == PIXELS and flat, cfg, bk, ops, flags, zp, mid)
        return y
    bm, bn = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"])
    grid = (triton.cdiv(m, bm) * triton.cdiv(oc, bn),)
    # Every pointer walk's tile is BLOCK_M consecutive rows of the flat [N*OH*OW, OC] output.
    y_arg, y_tma = output_boxes(y_out, cfg, bk, x.element_size(), res.element_size() if residual is not None else 0) \
        if flat else (y_out, False)
    _qconv_kernel[grid](
        x, wp, y_arg, m, oc, c, h_in, w_in, geo.oh, geo.ow, wp.shape[1],
        loop.steps * geo.kh * (1 if loop.path == ROWS else geo.kw), loop.steps, geo.kw,
        x.stride(0), x.stride(2), x.stride(3), res.stride(0), res.stride(1), res.stride(2), res.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3), geo.sh, geo.sw, ph, pw, geo.dh, geo.dw, **ops,
        ZPROW=zero_point_row(x_zp) if x_corr and x_zp is not None else x_scale, **zp,
        ZP_ROW=x_corr and x_zp is not None,
        PATH=loop.path, MASK_C=loop.path != ROWS and loop.tap_pad > 0, PIX=max(loop.pixel, 1), INSIDE=inside,
        ROW=geo.kw * loop.pixel, FLAT_OUT=flat, Y_TMA=y_tma, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        GROUP_M=int(cfg["GROUP_M"]), num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]), **flags,
        **mid, **launch_options(x))
    return y


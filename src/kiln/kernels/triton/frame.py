"""X [N, C, H, W] (any strides) copied into channels-last pixels of PIX elements inside a zero frame.

The implicit-GEMM convolution's ROWS walk (qconv.py) reads a convolution with few input
channels (ResNet's stem, C = 3) from this form: every pixel PIX elements (C of X, then
zeros), the padding present as zeros, so the kernel needs no masks. One program writes
BLOCK_W pixels of each of ROWS framed rows (n, hp), each as a [BLOCK_W, pixel] tile: X's
values where the row and column fall inside the image and the channel is below C, else 0. The tile is
loaded along W (each channel's run of an NCHW row is contiguous) and stored pixel-major
(one dense run), Triton moving it between the two orders on chip. One pass over the
output, reading X through its strides (NCHW straight from the model's input): torch's
way (zeros, then a strided copy into the interior) takes two passes and a
non-contiguous copy kernel. Values are moved, never converted: 8-bit X (float8 too) is
copied as bytes. With a fill (FILL: an 8-bit X's zero point), the frame and the channels past
C hold that code instead of 0: padding that dequantizes to 0 (an asymmetric uint8 X).

With FOLD = S > 1 the framed image is also folded space to depth (qconv_s2d.py): framed pixel
(hp, wp) lands in pixel (hp // S, wp // S) of the output, at position (hp % S, wp % S) of its
S x S block, so that an output pixel holds S*S*PIX elements: the same bytes, another order.

With QUANT, a float X is quantized on the way (per tensor, QuantizeLinear's arithmetic:
quantize.py's division and rounding, so the codes are its codes bit for bit), the frame and the
zero channels holding the code of 0: the 8-bit convolution's input in one pass over the float
one (a quantized layer whose QuantizeLinear moved into it, precision/fuse_input_quantize.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantize import _division_dtype
from kiln.kernels.triton.quantize import IN_DTYPES, OUT_TYPES, _in_precision, divide, quant_out, requantize
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor
BLOCK_W = 256       # framed columns per program (a ResNet stem row, 230, in one)
ROWS = 8            # framed rows per program: a row of 230 4-byte pixels is ~1 KB of work. With
                    # one half row a program (29,440 programs) the stem's frame took 23.7 us for
                    # 13 MB on an H200, with 8 rows 22.0: launching was not what bound it


@triton.jit
def _frame_kernel(x_ptr, y_ptr, R, C, H, W, HP, WP, PIX, PH, PW, sxn, sxc, sxh, sxw, QS, QI, QZ, FILL,
                  FOLD: tl.constexpr, HAS_FILL: tl.constexpr, QUANT: tl.constexpr, Q_HAS_ZP: tl.constexpr,
                  Q_PREC: tl.constexpr, Q_FP8: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    wp = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)  # framed columns
    ch = tl.arange(0, BLOCK_P)                               # elements of a pixel
    iw = wp - PW
    col_in = (iw >= 0) & (iw < W)
    store_mask = (wp < WP)[:, None] & (ch < PIX)[None, :]
    # Where a framed column's elements go in its output row (FOLD: its block column and phase).
    col_dst = (wp // FOLD) * (FOLD * FOLD * PIX) + (wp % FOLD) * PIX
    for i in range(ROWS):
        row = tl.program_id(0) * ROWS + i                    # n * HP + hp
        n = row // HP
        rows = tl.zeros([BLOCK_W], tl.int32) + row          # vectors: the row's tests join the masks
        ih = rows % HP - PH
        real = (rows < R)[:, None]
        inside = (col_in & (ih >= 0) & (ih < H))[:, None] & (ch < C)[None, :] & real
        src = x_ptr + n.to(tl.int64) * sxn + ih[:, None] * sxh + iw[:, None] * sxw + ch[None, :] * sxc
        v = tl.load(src, mask=inside, other=0)               # [BLOCK_W, BLOCK_P]: each channel's run along W
        if HAS_FILL:   # loaded as 0 and replaced (a non-zero `other` of an 8-bit load: x_tile in qconv_load.py)
            v = tl.where(inside, v, tl.load(FILL))
        if QUANT:   # QuantizeLinear's codes (quantize.py's _quantize_kernel, per tensor)
            zp = 0
            if Q_HAS_ZP:
                zp = tl.load(QZ)
            q = _in_precision(divide(_in_precision(v, Q_PREC), _in_precision(tl.load(QS), Q_PREC), tl.load(QI)), Q_PREC)
            v = requantize(q, zp, Q_HAS_ZP, Q_FP8, QMIN, QMAX).to(y_ptr.dtype.element_ty)
        hp = row - n * HP
        out_row = (n.to(tl.int64) * HP + (hp - hp % FOLD)) * WP * PIX + (hp % FOLD) * (FOLD * PIX)
        dst = y_ptr + out_row + col_dst[:, None] + ch[None, :]
        tl.store(dst, v, mask=store_mask & real)             # pixel-major: one dense run


def frame(x: Tensor, pixel: int, hp: int, wp: int, ph: int, pw: int, fold: int = 1,
          quantize: tuple[Tensor, Tensor | None, torch.dtype] | None = None, fill: Tensor | None = None) -> Tensor:
    """[N, pixel, hp, wp] channels-last (dense [N, hp, wp, pixel] underneath), X's dtype: X at
    rows ph.. and columns pw.., channels 0..C-1; zeros elsewhere (X's rows and columns past hp
    and wp are left out). Needs pixel >= C. With fold S: folded space to depth (module
    docstring), [N, S*S*pixel, hp/S, wp/S] (hp and wp multiples of S). With quantize = (y_scale,
    y_zero_point, type): a float X quantized per tensor to that 8-bit type on the way, the frame
    holding the code of 0 (module docstring). With fill, a one-element tensor of 8-bit X's type: the
    frame and the channels past C hold its value instead of 0."""
    n, c, h, w = x.shape
    assert pixel >= c and hp % fold == 0 and wp % fold == 0
    assert fill is None or (quantize is None and fill.dtype == x.dtype and x.element_size() == 1 and
                            fill.numel() == 1), "fill: one value of an 8-bit X's type, without quantize"
    out_type = x.dtype if quantize is None else quantize[2]
    bits = torch.uint8 if out_type.itemsize == 1 else out_type             # 8 bits moved as bytes
    src = x if quantize is not None else x.view(bits)
    out = torch.empty((n, hp // fold, wp // fold, fold * fold * pixel), dtype=bits, device=x.device)
    q = _quantize_args(x, out.view(out_type), quantize)
    if out.numel():
        block_w = min(BLOCK_W, triton.next_power_of_2(wp))
        grid = (triton.cdiv(n * hp, ROWS), triton.cdiv(wp, block_w))
        _frame_kernel[grid](src, out, n * hp, c, h, w, hp, wp, pixel, ph, pw, *src.stride(), *q["pointers"],
                            out if fill is None else fill.reshape(1).view(bits),
                            FOLD=fold, HAS_FILL=fill is not None, **q["flags"], ROWS=ROWS, BLOCK_W=block_w,
                            BLOCK_P=triton.next_power_of_2(pixel), num_warps=4, **launch_options(src))
    return out.permute(0, 3, 1, 2).view(out_type)


def _quantize_args(x: Tensor, out: Tensor, quantize: tuple[Tensor, Tensor | None, torch.dtype] | None) -> dict:
    """The kernel's quantization operands and switches: quantize.py's store-side QuantizeLinear
    (quant_out) into `out`, per tensor."""
    if quantize is None:
        return {"pointers": (x, x, x), "flags": dict(QUANT=False, Q_HAS_ZP=False, Q_PREC=0, Q_FP8=False, QMIN=0, QMAX=0)}
    scale, zero_point, target = quantize
    assert x.dtype in IN_DTYPES and scale.numel() == 1 and target in OUT_TYPES, \
        f"the framing copy quantizes float X per tensor to int8, uint8 or float8_e4m3fn, not {x.dtype} -> {target}"
    q = quant_out(out, scale, zero_point, _division_dtype(scale, 0))
    return {"pointers": (q.scale, q.inverse, q.scale if q.zero_point is None else q.zero_point),
            "flags": dict(QUANT=True, Q_HAS_ZP=q.zero_point is not None, Q_PREC=q.precision, Q_FP8=q.fp8,
                          QMIN=q.qmin, QMAX=q.qmax)}

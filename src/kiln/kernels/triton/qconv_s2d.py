"""Space to depth (config S2D=1): a strided convolution over few channels as a stride-1 one over
many, for the implicit-GEMM kernel (qconv.py) to walk with full-width loads.

ResNet's stem (7x7, stride 2, 3 channels) is the case: the ROWS walk reads each kernel row's taps
as one run of 7 pixels of 4 elements, but consecutive output pixels start 2 pixels (8 bytes of
8-bit X) apart, so its loads are 4-byte words, 7 steps of 32 with 28 used. Folded S x S, with S
the stride, the same convolution is a stride-1 one:

    framed X [N, C, HP, WP]  ->  F [N, HS, WS, P]     F[n, i, j, (dy, dx, c)] = X[n, c, S*i + dy, S*j + dx]
    W [OC, C, KH, KW]        ->  W' [OC, KW'*P, KH', 1]   W'[oc, (kw', dy, dx, c), kh'] = W[oc, c, S*kh' + dy, S*kw' + dx]

with P = S*S*PIX elements a folded pixel (PIX = C rounded up to 4, channels C.. zero), KH' =
ceil(KH/S), KW' = ceil(KW/S) (the taps past KH, KW and the channels past C zero in W'). Output
pixel (oh, ow) reads folded rows oh..oh+KH'-1 and, in each, the KW' folded pixels from ow on:
one contiguous run of KW'*P elements. So X' is F seen with overlapping pixels, [N, KW'*P, HS, OW]
with strides (HS*WS*P, 1, WS*P, P): pixel ow of X' is the run at folded pixel ow, and the
convolution is a KH' x 1, stride-1, unpadded one over X', C' = KW'*P channels. The kernel's TAPS
walk reads it (C' a multiple of 32: KW' is rounded up where needed), each row of a K step one
16-byte aligned run (P elements are at least 16 bytes), or the WINDOW walk by TMA boxes of the
overlapping view (qconv_window.py). The stem: P = 16, C' = 64, K = 4 x 64 = 256 (the ROWS walk's
224 plus zeros), 4 steps of 64.

The fold and the frame of the padding are one copy (frame.py with fold S); W' is made once per
weight tensor. The result is the convolution's, bit for bit: the same products, zeros added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln.kernels.conv_fold import PIXEL_ALIGN, folds
from kiln.kernels.memo import derived, derived_table
from kiln.kernels.triton.frame import frame
from kiln.kernels.triton.qconv_plan import ConvGeometry
from kiln.kernels.triton.qgemm_space import MIN_BLOCK_K

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True)
class Fold:
    """The folded convolution's sizes (module docstring)."""
    s: int          # the stride, the fold
    pix: int        # elements of an input pixel (C rounded up to PIXEL_ALIGN)
    kh: int         # KH'
    kw: int         # KW' (rounded up so that KW' * P is a multiple of 32)
    hs: int         # folded rows: OH + KH' - 1
    ws: int         # folded columns: OW + KW' - 1

    @property
    def pixel(self) -> int:
        """P: elements of a folded pixel."""
        return self.s * self.s * self.pix


def fold_of(channels: int, geo: ConvGeometry) -> Fold | None:
    """The fold of a conv over `channels` with window `geo`, or None where it does not apply
    (kernels/conv_fold.folds)."""
    if not folds(channels, (geo.sh, geo.sw), (geo.dh, geo.dw)) or geo.oh < 1 or geo.ow < 1:
        return None
    s = geo.sh
    pix = -(-channels // PIXEL_ALIGN) * PIXEL_ALIGN
    kh, kw = -(-geo.kh // s), -(-geo.kw // s)
    while (kw * s * s * pix) % MIN_BLOCK_K:
        kw += 1
    return Fold(s, pix, kh, kw, geo.oh + kh - 1, geo.ow + kw - 1)


# weight tensor -> {fold: W'} (kernels/memo.py)
_FOLDED = derived_table()


def folded_weight(w: Tensor, f: Fold) -> Tensor:
    """W' [OC, KW'*P, KH', 1] (module docstring), made once per weight tensor."""
    return derived(_FOLDED, w, f, lambda t: _fold_weight(t, f))


def _fold_weight(w: Tensor, f: Fold) -> Tensor:
    """W' as a normal tensor even when first made under inference mode (the tuner's): the
    launcher derives more from it (its packing, its largest value), and the memo needs the
    version counter inference tensors do not have."""
    oc, c, kh, kw = w.shape
    with torch.inference_mode(False):
        padded = torch.zeros((oc, f.pix, f.kh * f.s, f.kw * f.s), dtype=w.dtype, device=w.device)
        padded[:, :c, :kh, :kw] = w
        blocks = padded.reshape(oc, f.pix, f.kh, f.s, f.kw, f.s)             # [oc, c, kh', dy, kw', dx]
        return blocks.permute(0, 4, 3, 5, 1, 2).reshape(oc, f.kw * f.pixel, f.kh, 1).contiguous()


def space_to_depth(x: Tensor, w: Tensor, geo: ConvGeometry,
                   quantize: tuple[Tensor, Tensor | None, torch.dtype] | None = None,
                   fill: Tensor | None = None) -> tuple[Tensor, Tensor, ConvGeometry]:
    """(X', W', the KH' x 1 stride-1 window) of the folded convolution (module docstring), or a
    ValueError where the fold does not apply (fold_of). With quantize (frame.py's): a float X
    quantized in the same copy; with fill (frame.py's): X's zero point framing it."""
    f = fold_of(w.shape[1], geo)
    if f is None:
        raise ValueError(f"space to depth (config S2D) takes a conv with equal strides >= 2, no dilation and "
                         f"few channels; this one has {w.shape[1]} channels and window {geo}")
    folded = frame(x, f.pix, f.s * f.hs, f.s * f.ws, geo.ph, geo.pw, fold=f.s, quantize=quantize,
                   fill=fill)                                                # [N, P, HS, WS]
    n = x.shape[0]
    p = f.pixel
    xv = folded.as_strided((n, f.kw * p, f.hs, geo.ow), (f.hs * f.ws * p, 1, f.ws * p, p))
    window = ConvGeometry(f.kh, 1, 1, 1, 1, 1, 0, 0, geo.oh, geo.ow)
    return xv, folded_weight(w, f), window

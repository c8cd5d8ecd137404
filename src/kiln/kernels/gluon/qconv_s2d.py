"""A strided conv over few channels (ResNet's stem: 7x7, stride 2, 3 channels) on the warp-specialized
Gluon conv: folded space to depth as kernels/triton/qconv_s2d.py folds it (one framing copy, which
also quantizes a float X per tensor on the way), then the folded KH' x 1 stride-1 conv over the
view of overlapping pixels run by the Gluon kernel's WINDOW walk (qconv.py): a 4-D TMA box of that
view per tap, the MMA reading it from shared memory. The Triton S2D tactic walks the same view
with pointer loads. The stem: folded pixels of 16 bytes, C' = 64, 4 taps, K = 256.

The result is the convolution's (the same products, zeros added), requantized as qconv.py's
epilogue does; zero points must be 0. On an H200 (2026-11-29, benchmarks/kernels_stem.py, batch 64)
its best config runs the int8 stem conv in 100.9 us, the Triton S2D kernel's best 99.9, and
in ResNet-50's int8 engine the tuner picks it (conv 79.7 us where the Triton one took 83.8)."""
from __future__ import annotations

from typing import Any

import torch

from kiln.ir import dtypes
from kiln.kernels.gluon.qconv import GEOMETRY, qconv
from kiln.kernels.gluon.qconv_kernel import CONFIGS
from kiln.kernels.memo import all_zero
from kiln.kernels.triton.qconv_plan import conv_geometry
from kiln.kernels.triton.qconv_s2d import space_to_depth

Tensor = torch.Tensor

# The folded stem has 64 output channels: tiles of 64 or 128 of them.
S2D_CONFIGS: tuple[dict[str, Any], ...] = tuple(c for c in CONFIGS if c["BN"] <= 128)
FLOAT_X = (torch.float32, torch.float16, torch.bfloat16)


def qconv_s2d(x: Tensor, w: Tensor, x_scale: Tensor, x_zp: Tensor | None, w_scale: Tensor,
              w_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
              out_scale: Tensor | None = None, out_zp: Tensor | None = None, residual_scale: Tensor | None = None,
              residual_zp: Tensor | None = None, x_quant_scale: Tensor | None = None, mid_scale: Tensor | None = None,
              mid_zp: Tensor | None = None, *, activation: str = "", out_dtype: int = 0, x_dtype: int = 0,
              group: int = 1, config: dict[str, Any] | None = None, **conv_attrs: Any) -> Tensor:
    """kiln::QConv's contract for a conv that folds (kernels/conv_fold.folds): X 8-bit of W's type,
    or float with x_dtype naming W's type (quantized by x_quant_scale, else x_scale, in the framing
    copy); the rest as qconv.py's launcher takes it (Y of X's 8-bit type, Relu or none, zero
    points 0)."""
    if x_dtype:
        target = dtypes.from_onnx(x_dtype).torch
        if x.dtype not in FLOAT_X or target != w.dtype:
            raise ValueError(f"gluon qconv_s2d: a float X quantized to W's type; got X {x.dtype}, "
                             f"x_dtype {target}, W {w.dtype}")
        quantize = (x_scale if x_quant_scale is None else x_quant_scale, x_zp, target)
    elif x.dtype != w.dtype or x_quant_scale is not None:
        raise ValueError(f"gluon qconv_s2d: X of W's type {w.dtype} (or float with x_dtype); got {x.dtype}")
    else:
        quantize = None
    if x_zp is not None and not all_zero(x_zp):
        raise ValueError("gluon qconv_s2d: x_zp must be 0 (symmetric quantization)")
    if int(group) != 1:
        raise ValueError(f"gluon qconv_s2d: group 1; got {group}")
    geo = conv_geometry(x.shape, w.shape, **{k: conv_attrs[k] for k in GEOMETRY if k in conv_attrs})
    xv, wf, window = space_to_depth(x, w, geo, quantize)        # ValueError where the conv does not fold
    return qconv(xv, wf, x_scale, None, w_scale, w_zp, bias, residual, out_scale, out_zp, residual_scale,
                 residual_zp, None, mid_scale, mid_zp, activation=activation, out_dtype=out_dtype,
                 config=config, kernel_shape=[window.kh, window.kw])

"""Fallback tactics for kiln::QMatMul and kiln::QConv: dequantize, then a 16-bit vendor kernel.

When no 8-bit kernel runs a quantized layer within tolerance (an fp8 layer whose sum the
tensor cores' narrower fp8 accumulation moves too far, a shape the Triton kernels do not
take), the tuner's only other candidate would be the reference: exact float64 math, correct
but tens of times slower than any float kernel on a GPU. These tactics keep such a layer on
cuBLAS / cuDNN instead:

  A, B (int8/uint8/float8_e4m3fn)  ->  DQ(A) = (A - a_zp) * a_scale,  DQ(B) likewise per channel
  Y = [Q](act(DQ(A) @ DQ(B) + bias + residual))       QMatMul: torch.matmul (cuBLAS)
  Y = [Q](act(Conv(DQ(X), DQ(W)) + bias + residual))  QConv: F.conv2d (cuDNN, channels-last kept;
                                                       an 8-bit residual dequantized like X)

computed in the float output type (a_scale's; float32 math when the layer requantizes to an
integer type; then the reference's own requantization). The dequantized weight is made once per weight tensor
and memoised, as tactics/conv.py memoises channels-last weights. Every 8-bit value is exact
in float16/bfloat16/float32; the difference from the reference is one rounding of each
dequantized operand and the float kernel's accumulation, which the tuner checks against the
precision's tolerance like any candidate. Listed after the 8-bit tactics: the tuner times
them all and keeps the fastest that agrees.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.kernels.memo import derived, derived_table
from kiln.kernels.reference.common import resolve_pads, to_torch_pad
from kiln.kernels.reference.fused import ACTIVATIONS, apply_activation
from kiln.kernels.reference.quantized import requantize, requantized_type
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Tensor = torch.Tensor

EIGHT_BIT = ("int8", "uint8", "float8_e4m3fn")

# weight tensor -> {(compute dtype, channels_last): the dequantized copy} (kernels/memo.py)
_WEIGHTS = derived_table()


def _dequantize(q: Tensor, scale: Tensor, zp: Tensor | None, channel_shape: list[int], dtype: torch.dtype) -> Tensor:
    """(q - zp) * scale in `dtype`; a per-channel scale/zp is reshaped to `channel_shape`."""
    x = q.to(dtype)
    if zp is not None:
        x = x - (zp.to(dtype) if zp.numel() == 1 else zp.to(dtype).reshape(channel_shape))
    return x * (scale.to(dtype) if scale.numel() == 1 else scale.to(dtype).reshape(channel_shape))


def _weight(w: Tensor, scale: Tensor, zp: Tensor | None, channel_shape: list[int], dtype: torch.dtype,
            channels_last: bool = False) -> Tensor:
    """The dequantized weight, made once per weight tensor (and dtype)."""
    def make(t: Tensor) -> Tensor:
        d = _dequantize(t, scale, zp, channel_shape, dtype)
        return d.contiguous(memory_format=torch.channels_last) if channels_last else d
    return derived(_WEIGHTS, w, (dtype, channels_last), make)


def _finish(y: Tensor, bias: Tensor | None, bias_shape: list[int], residual: Tensor | None, activation: str,
            params: Sequence[float], out_dtype_float: torch.dtype, out_scale: Tensor | None,
            out_zp: Tensor | None, out_dtype: int) -> Tensor:
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(bias_shape)
    if residual is not None:
        y = y + residual.to(y.dtype)
    y = apply_activation(y, activation, params) if activation else y
    if out_scale is not None:
        return requantize(y.to(torch.float32), out_scale, out_zp, out_dtype, bias_shape)
    return y.to(out_dtype_float)


def _compute_dtype(a_scale: Tensor, out_scale: Tensor | None, out_zp: Tensor | None, out_dtype: int) -> torch.dtype:
    """float32 when the layer requantizes to an integer type (its uniform grid leaves no room for a
    16-bit rounding before it: compiler/tolerance.py); otherwise the float output type, also for a
    float8 output (the tolerance judges it beside float16 errors)."""
    if out_scale is not None and not requantized_type(out_zp, out_dtype).name.startswith("float8"):
        return torch.float32
    return a_scale.dtype


def dequant_qmatmul(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
                    b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
                    out_scale: Tensor | None = None, out_zp: Tensor | None = None, *, trans_b: int = 0,
                    activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
                    dynamic: int = 0) -> Tensor:
    """kiln::QMatMul as dequantize + torch.matmul (cuBLAS) + the epilogue in torch (A's parameters
    read on the device alike whether `dynamic` or not)."""
    dt = _compute_dtype(a_scale, out_scale, out_zp, out_dtype)
    b = _weight(b_q, b_scale, b_zp, [-1, 1] if trans_b else [-1], dt)
    a = _dequantize(a_q, a_scale, a_zp, [-1], dt)
    y = torch.matmul(a, b.transpose(-1, -2) if trans_b else b)
    return _finish(y, bias, [-1], residual, activation, activation_params, a_scale.dtype, out_scale, out_zp,
                   out_dtype)


def dequant_qconv(x_q: Tensor, w_q: Tensor, x_scale: Tensor, x_zp: Tensor | None, w_scale: Tensor,
                  w_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
                  out_scale: Tensor | None = None, out_zp: Tensor | None = None, residual_scale: Tensor | None = None,
                  residual_zp: Tensor | None = None, *, auto_pad: str = "NOTSET",
                  dilations: Sequence[int] | None = None, group: int = 1, kernel_shape: Sequence[int] | None = None,
                  pads: Sequence[int] | None = None, strides: Sequence[int] | None = None, activation: str = "",
                  activation_params: Sequence[float] = (), out_dtype: int = 0) -> Tensor:
    """kiln::QConv (2-D) as dequantize + F.conv2d (cuDNN) + the epilogue in torch."""
    dt = _compute_dtype(x_scale, out_scale, out_zp, out_dtype)
    cl = x_q.is_contiguous(memory_format=torch.channels_last) and not x_q.is_contiguous()
    w = _weight(w_q, w_scale, w_zp, [-1, 1, 1, 1], dt, channels_last=cl)
    x = _dequantize(x_q, x_scale, x_zp, [1, -1, 1, 1], dt)
    spatial = list(x.shape[2:])
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    strides_ = list(strides) if strides else [1, 1]
    dil = list(dilations) if dilations else [1, 1]
    full = resolve_pads(auto_pad, spatial, kernel, strides_, dil, pads)  # [begins..., ends...]
    begin, end = full[:2], full[2:]
    if begin != end:  # asymmetric padding: pad explicitly, then no conv padding
        x = F.pad(x, to_torch_pad(full))
        padding: Any = 0
    else:
        padding = begin
    y = F.conv2d(x, w, None, strides_, padding, dil, group)
    if residual is not None and residual_scale is not None:  # an 8-bit residual (reference/quantized.py)
        residual = _dequantize(residual, residual_scale, residual_zp, [1, -1, 1, 1], dt)
    return _finish(y, bias, [1, -1, 1, 1], residual, activation, activation_params, x_scale.dtype, out_scale, out_zp,
                   out_dtype)


def _supported(query: TacticQuery, inputs: int = 10) -> bool:
    """CUDA, 8-bit A and B, float scales, a known activation, no input past the first `inputs`
    (the ones these kernels take: not the mid quantization, not a float X)."""
    dts = query.input_dtypes
    return (query.device == "cuda" and len(dts) >= 5 and dts[0] in EIGHT_BIT and dts[1] in EIGHT_BIT
            and dts[2] in FLOAT_NAMES and dts[4] in FLOAT_NAMES and query.attrs.get("activation", "") in ACTIVATIONS
            and all(d is None for d in dts[inputs:]))


def supports_qconv(query: TacticQuery) -> bool:
    """As _supported, for a 2-D conv; an 8-bit residual needs its one-element residual_scale."""
    shapes, dts = query.input_shapes, query.input_dtypes
    x = shapes[0] if shapes else None
    res_scale = dts[10] if len(dts) > 10 else None
    residual_ok = res_scale is None or (dts[7] in EIGHT_BIT and res_scale in FLOAT_NAMES)
    return _supported(query, 12) and (x is None or len(x) == 4) and residual_ok and not query.attrs.get("x_dtype")


register_tactic(Tactic("kiln::QMatMul.dequant_cublas", "kiln::QMatMul", 1, ("cuda",), dequant_qmatmul, _supported))
register_tactic(Tactic("kiln::QConv.dequant_cudnn", "kiln::QConv", 1, ("cuda",), dequant_qconv, supports_qconv))

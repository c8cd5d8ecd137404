"""Quantization ops: QuantizeLinear/DequantizeLinear (per-tensor, per-axis, blocked), DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger.

Sub-byte types are held widened (int4/int2 in int8, uint4/uint2 in uint8, float4 e2m1 and
float8 e8m0 in float32), so a kernel cannot tell int4 from int8 by the torch dtype alone:
QuantizeLinear reads its target type from `output_dtype` (the importer fills it in from the
declared types) and falls back to the zero point's torch dtype.

Integer products are accumulated in float64, which holds every int32 sum of int8/uint8
products exactly and has matmul/conv kernels on CPU and CUDA alike.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from kiln.ir import dtypes
from kiln.kernels.reference.common import FLOAT8_LIMITS, norm_axis, round_to_float8
from kiln.kernels.reference.nn import conv
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

# Saturation range of each integer quantized type, by kiln dtype name.
INT_RANGES = {
    "uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
    "uint4": (0, 15), "int4": (-8, 7), "uint2": (0, 3), "int2": (-2, 1), "int32": (-2**31, 2**31 - 1),
}


_FP4_MAX = 6.0


# ---------------------------------------------------------------- scale / zero point layout


def _broadcastable(p: Tensor, shape: Sequence[int], axis: int, block_size: int) -> Tensor:
    """Scale or zero point `p` laid out to broadcast against an input of `shape`.

    One element: per-tensor. Otherwise blocked (block_size > 0: repeated block_size
    times along `axis`, the last block cut to fit) or per-axis (1-D, along `axis`).
    """
    if p.numel() == 1:
        return p.reshape(())
    a = norm_axis(axis, len(shape))
    if block_size > 0:
        if p.dim() != len(shape):
            raise ValueError(f"blocked quantization needs a scale of rank {len(shape)}; got shape {tuple(p.shape)}")
        p = torch.repeat_interleave(p, block_size, dim=a).narrow(a, 0, shape[a])
        if tuple(p.shape) != tuple(shape):
            raise ValueError(f"scale of shape {tuple(p.shape)} (after blocking) does not match input {tuple(shape)}")
        return p
    if p.dim() != 1 or p.numel() != shape[a]:
        raise ValueError(f"per-axis scale must be 1-D of length {shape[a]} (axis {axis}); got shape {tuple(p.shape)}")
    dims = [1] * len(shape)
    dims[a] = p.numel()
    return p.reshape(dims)


# ---------------------------------------------------------------- element conversions


def _round_fp4(v: Tensor) -> Tensor:
    """`v` rounded to the float4 e2m1 grid (0, .5, 1, 1.5, 2, 3, 4, 6), ties to even, saturating.

    The grid step is 2^(max(e, 0) - 1) for |v| in [2^e, 2^(e+1)): rounding |v| / step
    half-to-even picks the neighbour with the even mantissa, as RNE on the bits does.
    """
    mag = v.abs().clamp(max=_FP4_MAX)
    _, e = torch.frexp(mag)  # mag = m * 2^e, m in [0.5, 1): floor(log2 mag) = e - 1
    step_exp = torch.clamp(e - 1, min=0) - 1
    q = torch.ldexp(torch.round(torch.ldexp(mag, -step_exp)), step_exp)
    return torch.copysign(q.clamp(max=_FP4_MAX), v)


def _as_float(t: Tensor) -> Tensor:
    """`t` as float64 (exact for every quantized type kiln holds)."""
    return t.to(torch.float64)


# ---------------------------------------------------------------- QuantizeLinear / DequantizeLinear


def _quant_type(zero_point: Tensor | None, output_dtype: int) -> dtypes.DType:
    """The DType QuantizeLinear produces: output_dtype, else the zero point's, else uint8."""
    if output_dtype:
        return dtypes.from_onnx(output_dtype)
    if zero_point is None:
        return dtypes.BY_NAME["uint8"]
    if zero_point.dtype == torch.float32:  # the only quantized type held in float32 here
        return dtypes.BY_NAME["float4_e2m1"]
    return dtypes.from_torch(zero_point.dtype)


def _division_dtype(scale: Tensor, precision: int) -> torch.dtype:
    """The dtype of x / y_scale: `precision` if given, else y_scale's (int scales: float64)."""
    dt = dtypes.onnx_to_torch(precision) if precision else scale.dtype
    return dt if dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float64


def per_last_axis(x_shape: Sequence[Any], scale_shape: Sequence[Any], axis: int) -> bool:
    """Parameters per channel of X's last axis: a 1-D scale of X.shape[-1] > 1 elements, `axis`
    the last (what the Triton QuantizeLinear takes besides per-tensor parameters)."""
    rank = len(x_shape)
    return (rank > 0 and len(scale_shape) == 1 and scale_shape[0] == x_shape[-1] and x_shape[-1] != 1
            and axis in (-1, rank - 1))


def division_scale(scale: float, scale_type: torch.dtype, division: torch.dtype) -> tuple[float, float]:
    """A constant QuantizeLinear scale as quantize_linear divides by it: the value in its own type,
    then in the division's (the `precision` attribute's type, else its own), as float32; and
    1 / that, correctly rounded in float32 (what kernels that multiply instead take)."""
    s = torch.tensor(scale, dtype=scale_type).to(division).to(torch.float32)
    return float(s), float(torch.reciprocal(s))


@reference_op("QuantizeLinear")
def quantize_linear(x: Tensor, y_scale: Tensor, y_zero_point: Tensor | None = None, *, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, precision: int = 0,
                    saturate: int = 1) -> Tensor:
    """Y = saturate(round_half_even(X / y_scale) + y_zero_point) in the quantized type."""
    qt = _quant_type(y_zero_point, output_dtype)
    prec = _division_dtype(y_scale, precision)
    scale = _broadcastable(y_scale, x.shape, axis, block_size).to(prec)
    v = (x.to(prec) / scale).to(torch.float64)
    zp = None if y_zero_point is None else _as_float(_broadcastable(y_zero_point, x.shape, axis, block_size))
    if qt.name in INT_RANGES:
        lo, hi = INT_RANGES[qt.name]
        v = torch.round(v)
        if zp is not None:
            v = v + zp
        return v.clamp(lo, hi).to(qt.torch)
    if zp is not None:
        v = v + zp
    if qt.name == "float4_e2m1":
        return _round_fp4(v).to(torch.float32)
    if qt.torch in FLOAT8_LIMITS:
        return round_to_float8(v.to(torch.float32), qt.torch, saturate)
    raise TypeError(f"QuantizeLinear cannot produce {qt.name}")


@reference_op("DequantizeLinear")
def dequantize_linear(x: Tensor, x_scale: Tensor, x_zero_point: Tensor | None = None, *, axis: int = 1,
                      block_size: int = 0, output_dtype: int = 0) -> Tensor:
    """Y = (X - x_zero_point) * x_scale, in output_dtype (default: x_scale's type)."""
    out = dtypes.onnx_to_torch(output_dtype) if output_dtype else x_scale.dtype
    v = _as_float(x)
    if x_zero_point is not None:
        v = v - _as_float(_broadcastable(x_zero_point, x.shape, axis, block_size))
    # float64 holds (x - zp) and its product with a float32 scale exactly for every type
    # up to 16 bits, so the result is rounded once, to `out`.
    return (v * _as_float(_broadcastable(x_scale, x.shape, axis, block_size))).to(out)


@reference_op("DynamicQuantizeLinear")
def dynamic_quantize_linear(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Y, y_scale, y_zero_point): uint8 quantization of X over [min(0, X), max(0, X)]."""
    xf = x.to(torch.float32)
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    hi = torch.maximum(zero, xf.max()) if xf.numel() else zero
    lo = torch.minimum(zero, xf.min()) if xf.numel() else zero
    # As onnx's reference: a zero range gives a scale of 1/255 (every value is then 0).
    scale = torch.where(hi == lo, torch.ones_like(hi), hi - lo) / torch.tensor(255.0, device=x.device)
    zp = torch.round(torch.clamp(-lo / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(xf / scale) + zp, 0.0, 255.0)
    return y.to(torch.uint8), scale.to(x.dtype), zp.to(torch.uint8)


@reference_op("DynamicQuantize", domain="kiln")
def signed_dynamic_quantize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Y - 128, y_scale, y_zero_point - 128) of DynamicQuantizeLinear, codes and zero point int8:
    every Y - y_zero_point is unchanged, in the type int8 tensor-core GEMMs read
    (passes/signed_dynamic_codes.py)."""
    y, scale, zp = dynamic_quantize_linear(x)
    return (y.to(torch.int16) - 128).to(torch.int8), scale, (zp.to(torch.int16) - 128).to(torch.int8)


# ---------------------------------------------------------------- integer matmul / conv


def _row_param(p: Tensor, a: Tensor) -> Tensor:
    """A per-row parameter of `a` [..., M, K] given as a 1-D [M] laid out as [M, 1]."""
    if p.dim() == 1 and p.numel() > 1 and a.dim() >= 2:
        return p.unsqueeze(-1)
    return p


def _centered(t: Tensor, zero_point: Tensor | None) -> Tensor:
    v = _as_float(t)
    return v if zero_point is None else v - _as_float(zero_point)


def _channel_param(p: Tensor, rank: int) -> Tensor:
    """A per-output-channel 1-D parameter [M] laid out as [M, 1, ...] (rank dims in all)."""
    return p.reshape([-1] + [1] * (rank - 1)) if p.dim() == 1 and p.numel() > 1 else p.reshape(())


def _qmatmul_f64(a: Tensor, a_zero_point: Tensor | None, b: Tensor, b_zero_point: Tensor | None) -> Tensor:
    """(A - a_zp) @ (B - b_zp) exactly, in float64 (a_zp per row, b_zp per column)."""
    a_zp = None if a_zero_point is None else _row_param(a_zero_point, a)
    return torch.matmul(_centered(a, a_zp), _centered(b, b_zero_point))


def _qconv_f64(x: Tensor, w: Tensor, x_zero_point: Tensor | None, w_zero_point: Tensor | None,
               bias: Tensor | None, conv_attrs: dict) -> Tensor:
    """conv(X - x_zp, W - w_zp) + B exactly, in float64 (padding holds the zero point)."""
    w_zp = None if w_zero_point is None else _channel_param(w_zero_point, w.dim())
    x_zp = None if x_zero_point is None else x_zero_point.reshape(())
    b = None if bias is None else _as_float(bias)
    return conv(_centered(x, x_zp), _centered(w, w_zp), b, **conv_attrs)


def _requantize(acc: Tensor, multiplier: Tensor, y_zero_point: Tensor | None,
                out: torch.dtype) -> Tensor:
    """round_half_even(acc * multiplier + y_zp), saturated to `out` (an int or float8 type)."""
    v = acc * _as_float(multiplier)
    if y_zero_point is not None:
        v = v + _as_float(y_zero_point)
    if out in FLOAT8_LIMITS:
        return round_to_float8(v.to(torch.float32), out, 1)
    info = torch.iinfo(out)
    return torch.round(v).clamp(info.min, info.max).to(out)


@reference_op("MatMulInteger")
def matmul_integer(a: Tensor, b: Tensor, a_zero_point: Tensor | None = None,
                   b_zero_point: Tensor | None = None) -> Tensor:
    """Y = (A - a_zero_point) @ (B - b_zero_point) in int32 (zero points per tensor, row or column)."""
    return _qmatmul_f64(a, a_zero_point, b, b_zero_point).to(torch.int32)


@reference_op("QLinearMatMul")
def qlinear_matmul(a: Tensor, a_scale: Tensor, a_zero_point: Tensor | None, b: Tensor, b_scale: Tensor,
                   b_zero_point: Tensor | None, y_scale: Tensor, y_zero_point: Tensor | None = None) -> Tensor:
    """Y = quantize((A - a_zp) @ (B - b_zp) * a_scale * b_scale / y_scale + y_zp), type of y_zp."""
    acc = _qmatmul_f64(a, a_zero_point, b, b_zero_point)
    # The multiplier is formed in the scales' own type, as onnx's reference does.
    multiplier = _row_param(a_scale, a) * b_scale / y_scale
    out = y_zero_point.dtype if y_zero_point is not None else a.dtype
    return _requantize(acc, multiplier, y_zero_point, out)


@reference_op("ConvInteger")
def conv_integer(x: Tensor, w: Tensor, x_zero_point: Tensor | None = None, w_zero_point: Tensor | None = None,
                 *, auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None, group: int = 1,
                 kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> Tensor:
    """Y = conv(X - x_zero_point, W - w_zero_point) in int32 (w_zero_point per tensor or channel)."""
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                 pads=pads, strides=strides)
    return _qconv_f64(x, w, x_zero_point, w_zero_point, None, attrs).to(torch.int32)


@reference_op("QLinearConv")
def qlinear_conv(x: Tensor, x_scale: Tensor, x_zero_point: Tensor | None, w: Tensor, w_scale: Tensor,
                 w_zero_point: Tensor | None, y_scale: Tensor, y_zero_point: Tensor | None = None,
                 B: Tensor | None = None, *, auto_pad: str = "NOTSET",  # noqa: N803 (ONNX input name)
                 dilations: Sequence[int] | None = None, group: int = 1,
                 kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> Tensor:
    """Y = quantize(conv(X - x_zp, W - w_zp) + B) with x_scale * w_scale / y_scale, type of y_zp."""
    attrs = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                 pads=pads, strides=strides)
    acc = _qconv_f64(x, w, x_zero_point, w_zero_point, B, attrs)
    # w_scale may be per output channel: [M] -> [1, M, 1, ...].
    ws = w_scale.reshape([1, -1] + [1] * (x.dim() - 2)) if w_scale.numel() > 1 else w_scale.reshape(())
    multiplier = x_scale.reshape(()) * ws / y_scale.reshape(())
    out = y_zero_point.dtype if y_zero_point is not None else x.dtype
    zp = None if y_zero_point is None else y_zero_point.reshape(())
    return _requantize(acc, multiplier, zp, out)

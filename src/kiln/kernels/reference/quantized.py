"""Reference implementations of kiln's quantized layers: kiln::QMatMul and kiln::QConv.

They are what passes/fuse_qdq.py turns a QDQ chain into,
  [Q](act(DQ(A) @ DQ(B) + bias + residual))        -> kiln::QMatMul
  [Q](act(Conv(DQ(X), DQ(W)) + bias + residual))   -> kiln::QConv
and they are defined so that every step is exact up to one final rounding:

  acc  = sum_k (a - a_zp)(b - b_zp)     exact; held in float64 (bounds below)
  v    = acc * (a_scale * b_scale) + bias + residual      in float64
         (QConv with residual_scale: residual = (R - residual_zp) * residual_scale, R 8-bit)
  v    = act(v)                                           ACTIVATIONS, in float64
  Y    = v rounded once to a_scale's dtype                 (no out_scale: float output)
  Y    = saturate(round_half_even(v / out_scale) + out_zp) (out_scale given)

a_scale/a_zp are per tensor (one element). b_scale/b_zp are per tensor or per output
channel: 1-D of length N, the last axis of Y (QMatMul; the column of B, or its row when
trans_b) or dim 1 of Y (QConv; dim 0 of W). out_scale/out_zp are per tensor or per output
channel likewise (per channel: the requantization of an activation that SmoothQuant divides
per channel, precision/smooth_quant.py; out_zp then has out_scale's shape). The
requantized type is `out_dtype` (an ONNX TensorProto enum) when non-zero, else out_zp's
type, else uint8, as QuantizeLinear; integer types saturate to their range, float8 types
saturate to their largest finite value (QuantizeLinear's saturate=1).
QConv's optional residual_scale/residual_zp (inputs 10 and 11, per tensor) make the residual
an 8-bit tensor (int8, uint8 or float8_e4m3fn) that the layer dequantizes itself, so that a
residual stream kept in 8 bits (precision/quantize_residuals.py) is read as written.
QConv's optional mid_scale/mid_zp (inputs 13 and 14, per tensor, an int8/uint8 mid_zp or none
for uint8) quantize the conv's own value before the residual joins, as an explicitly quantized
model writes a residual block (ONNX Runtime's QDQ: Conv -> Q -> DQ -> Add(DQ(r)) -> Q):
  v    = acc * (x_scale * w_scale) + bias                  in float64
  v    = (saturate(round_half_even(v / mid_scale) + mid_zp) - mid_zp) * mid_scale
  v    = act(v + residual), then Y as above
(passes/fuse_qdq_residual.py), so the layer writes the block's output codes in one kernel.
Inputs A/B (X/W) are int8, uint8 or float8_e4m3fn (either may be either). Why the float64
accumulator is exact, for any order of summation (every partial sum obeys the same bound):
- int8/uint8: each product is an integer of magnitude <= 2^16, so a sum of K of them is an
  integer below K * 2^16, exact while that is < 2^53: any real K.
- float8_e4m3fn (precision/fp8.py): every value is a multiple of 2^-9 (the smallest
  subnormal) of magnitude <= 448, so a product is a multiple of 2^-18 of magnitude <= 448^2
  = 200704 (a mixed fp8 x int8 product: a multiple of 2^-9, <= 448 * 255), and a sum of K
  products is a multiple of 2^-18 below K * 448^2. float64 holds every multiple of 2^-18
  below 2^35 exactly, so the sum is exact while K * 448^2 <= 2^35: K <= FP8_EXACT_K
  (171196). K is the reduction length: A's last dim (QMatMul) or C/group * prod(kernel)
  (QConv). A longer reduction is refused rather than rounded. float8 has no zero point:
  a_zp/b_zp of a float8 input must be absent or zero.
This reference defines the arithmetic that GPU fast paths (int8 and fp8 tensor-core
kernels: torch._scaled_mm, Triton fp8 dots, future work for fp8) must match: exact
products, a sum rounded at most once at the end, then the float64 epilogue.

The unfused float32 graph rounds to float32 after every op; the fused op does not, so
the two can differ in the last float32 bit, which moves a requantized output by one step
only when it falls within that bit of a rounding tie.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from kiln.ir import dtypes
from kiln.kernels.reference.common import FLOAT8_LIMITS, round_to_float8
from kiln.kernels.reference.fused import apply_activation, pointwise
from kiln.kernels.reference.nn import conv
from kiln.kernels.reference.quantize import INT_RANGES, quantize_linear
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

# Input types of the quantized ops, and the longest fp8 reduction summed exactly in float64:
# the largest K with K * 448^2 <= 2^35 (module docstring).
_INPUT_TYPES = (torch.int8, torch.uint8, torch.float8_e4m3fn)
FP8_EXACT_K = 2**35 // (448 * 448)
# The ops' input positions, as their signatures below take them: the one table the precision
# passes and the tactics index (QMatMul's first ten are QConv's first ten; QConv adds an 8-bit
# residual's scale and zero point, the scale that quantizes a float X, with x_dtype, where it
# is not x_scale; both end with the mid quantization: QConv's before the residual, QMatMul's
# before the bias).
QMATMUL_INPUTS = ("a_q", "b_q", "a_scale", "a_zp", "b_scale", "b_zp", "bias", "residual", "out_scale", "out_zp",
                  "mid_scale", "mid_zp", "table")
QCONV_INPUTS = ("x_q", "w_q", "x_scale", "x_zp", "w_scale", "w_zp", "bias", "residual", "out_scale", "out_zp",
                "residual_scale", "residual_zp", "x_quant_scale", "mid_scale", "mid_zp")


def _f64(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float64)


def _per_tensor(p: Tensor | None, what: str) -> Tensor | None:
    if p is not None and p.numel() != 1:
        raise ValueError(f"{what} must be per tensor (one element); got shape {tuple(p.shape)}")
    return None if p is None else p.to(torch.float64).reshape(())


def _channel(p: Tensor | None, channels: int, shape: list[int], what: str) -> Tensor | None:
    """A per-tensor or per-channel (1-D [channels]) parameter reshaped to `shape` (one -1)."""
    if p is None or p.numel() == 1:
        return None if p is None else p.to(torch.float64).reshape(())
    if p.dim() != 1 or p.numel() != channels:
        raise ValueError(f"{what} must have one element or {channels} (one per output channel); "
                         f"got shape {tuple(p.shape)}")
    return p.to(torch.float64).reshape(shape)


def _check_inputs(op: str, a: Tensor, b: Tensor, a_zp: Tensor | None, b_zp: Tensor | None, k: int) -> None:
    """Input types the exact accumulation covers; no zero point and a bounded K for float8."""
    for name, t, zp in (("A", a, a_zp), ("B", b, b_zp)):
        if t.dtype not in _INPUT_TYPES:
            raise TypeError(f"kiln::{op} input {name} is {t.dtype}; it takes int8, uint8 or float8_e4m3fn "
                            "(quantize it with QuantizeLinear first)")
        if t.dtype == torch.float8_e4m3fn and zp is not None and bool(torch.any(zp.to(torch.float64) != 0)):
            raise ValueError(f"kiln::{op} input {name} is float8_e4m3fn, which has no zero point, but its zero "
                             "point is non-zero; pass None (or 0)")
    if torch.float8_e4m3fn in (a.dtype, b.dtype) and k > FP8_EXACT_K:
        raise ValueError(f"kiln::{op} sums {k} float8 products per output, more than the {FP8_EXACT_K} that "
                         "float64 holds exactly; split the reduction or keep this layer in float")


def dequantized_residual(residual: Tensor, residual_scale: Tensor | None, residual_zp: Tensor | None) -> Tensor:
    """The residual in float64: as given, or (R - residual_zp) * residual_scale for an 8-bit R."""
    if residual_scale is None:
        if residual_zp is not None:
            raise ValueError("residual_zp is given without residual_scale; give both or neither")
        return residual.to(torch.float64)
    if residual.dtype not in _INPUT_TYPES:
        raise TypeError(f"a residual with residual_scale is an 8-bit tensor (int8, uint8 or float8_e4m3fn); "
                        f"got {residual.dtype}")
    r = residual.to(torch.float64)
    if residual_zp is not None:
        r = r - _per_tensor(residual_zp, "residual_zp")
    return r * _per_tensor(residual_scale, "residual_scale")


def _finish(acc: Tensor, scale: Tensor, bias: Tensor | None, bias_shape: list[int], residual: Tensor | None,
            activation: str, activation_params: Sequence[float], float_dtype: torch.dtype,
            out_scale: Tensor | None, out_zp: Tensor | None, out_dtype: int,
            mid: tuple[Tensor, Tensor | None] | None = None, mid_before_bias: bool = False) -> Tensor:
    """Scale the exact accumulator, add the epilogue (residual in float64), and round once; with
    mid = (mid_scale, mid_zp), the value is quantized to those codes and back before the residual
    (QConv: after the bias) or before the bias (mid_before_bias, QMatMul) (module docstring)."""
    v = acc * scale
    if mid is not None and mid_before_bias:
        v = _mid_round_trip(v, mid, per_column=True)
    if bias is not None:
        v = v + bias.to(torch.float64).reshape(bias_shape)
    if mid is not None and not mid_before_bias:
        v = _mid_round_trip(v, mid)
    if residual is not None:
        v = v + residual.to(torch.float64)
    v = apply_activation(v, activation, activation_params)
    if out_scale is None:
        return v.to(float_dtype)
    return requantize(v, out_scale, out_zp, out_dtype, bias_shape)


def _mid_round_trip(v: Tensor, mid: tuple[Tensor, Tensor | None], per_column: bool = False) -> Tensor:
    """v quantized to the codes of (mid_scale, mid_zp) and dequantized again: per tensor, or with
    `per_column` (QMatMul) one value per output column or one for all."""
    if not per_column or mid[0].numel() == 1:
        codes = requantize(v, mid[0], mid[1], 0).to(torch.float64)
        zp, scale = _per_tensor(mid[1], "mid_zp"), _per_tensor(mid[0], "mid_scale")
    else:
        if mid[1] is not None and mid[1].numel() != mid[0].numel():
            raise ValueError(f"mid_zp must have mid_scale's {mid[0].numel()} elements; got {mid[1].numel()}")
        codes = requantize(v, mid[0], mid[1], 0, [-1]).to(torch.float64)
        n = v.shape[-1]
        zp, scale = _channel(mid[1], n, [-1], "mid_zp"), _channel(mid[0], n, [-1], "mid_scale")
    return (codes if zp is None else codes - zp) * scale


def _checked_mid(op: str, mid_scale: Tensor | None, mid_zp: Tensor | None) -> tuple[Tensor, Tensor | None] | None:
    """(mid_scale, mid_zp), or None without a mid quantization; errors for a malformed one."""
    if mid_scale is None and mid_zp is not None:
        raise ValueError(f"kiln::{op} has mid_zp but no mid_scale; give both or neither")
    if mid_scale is not None and requantized_type(mid_zp, 0).name not in ("int8", "uint8"):
        raise TypeError(f"kiln::{op}'s mid_zp is int8 or uint8 (the layer's own codes); got {mid_zp.dtype}")
    return None if mid_scale is None else (mid_scale, mid_zp)


def requantized_type(out_zp: Tensor | None, out_dtype: int) -> dtypes.DType:
    """The type a requantizing layer writes: out_dtype when non-zero, else out_zp's, else uint8."""
    if out_dtype:
        return dtypes.from_onnx(out_dtype)
    return dtypes.from_torch(out_zp.dtype) if out_zp is not None else dtypes.BY_NAME["uint8"]


def output_type(float_scale: Tensor, out_scale: Tensor | None, out_zp: Tensor | None, out_dtype: int) -> dtypes.DType:
    """Y's type: the activation scale's float type, or the requantized type when out_scale is given."""
    return dtypes.from_torch(float_scale.dtype) if out_scale is None else requantized_type(out_zp, out_dtype)


def requantize(v: Tensor, out_scale: Tensor, out_zp: Tensor | None, out_dtype: int,
                channel_shape: list[int] | None = None) -> Tensor:
    """v / out_scale rounded to the requantized type (+ out_zp, saturated). With `channel_shape`
    (v's output-channel axis as -1: [-1] for QMatMul, [1, -1, 1, 1] for QConv) out_scale and
    out_zp may also hold one value per output channel."""
    qt = requantized_type(out_zp, out_dtype)
    if channel_shape is None or out_scale.numel() == 1:
        zp, scale = _per_tensor(out_zp, "out_zp"), _per_tensor(out_scale, "out_scale")
    else:
        channels = v.shape[channel_shape.index(-1) - len(channel_shape)]
        scale = _channel(out_scale, channels, channel_shape, "out_scale")
        if out_zp is not None and out_zp.numel() != out_scale.numel():
            raise ValueError(f"out_zp must have out_scale's {out_scale.numel()} elements; got {out_zp.numel()}")
        zp = _channel(out_zp, channels, channel_shape, "out_zp")
    v = v / scale
    if qt.name in INT_RANGES:
        lo, hi = INT_RANGES[qt.name]
        v = torch.round(v) if zp is None else torch.round(v) + zp
        return v.clamp(lo, hi).to(qt.torch)
    if qt.torch in FLOAT8_LIMITS:
        return round_to_float8((v if zp is None else v + zp).to(torch.float32), qt.torch, 1)
    raise TypeError(f"kiln quantized ops cannot requantize to {qt.name}; use an 8-bit integer or float8 type")


@reference_op("QMatMul", domain="kiln")
def qmatmul(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
            b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
            out_scale: Tensor | None = None, out_zp: Tensor | None = None, mid_scale: Tensor | None = None,
            mid_zp: Tensor | None = None, table: Tensor | None = None, *, trans_b: int = 0,
            activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
            dynamic: int = 0) -> Tensor:
    """Y = [Q](act(DQ(A) @ DQ(B') + bias + residual)), exact accumulation (module docstring).
    `dynamic` 1: a_scale and a_zp are computed at run time (DynamicQuantizeLinear's), which kernels
    read on the device only; the arithmetic is the same. With
    mid_scale (and mid_zp, int8/uint8; uint8 without one) the product is quantized to those codes
    and back before the bias is added (ONNX Runtime's MatMul -> Q -> DQ -> Add(bias)); one value
    each, or one per output column (merged projections, each keeping its own). With `table` (256
    8-bit codes; precision/fuse_code_table.py) each output code c becomes table[bits of c]: the
    element-wise program of one 8-bit input that followed the layer (ONNX Runtime's QDQ Gelu)."""
    n = b_q.shape[-2] if trans_b else b_q.shape[-1]
    _check_inputs("QMatMul", a_q, b_q, a_zp, b_zp, a_q.shape[-1])
    # b_zp per channel centers B's columns ([K, N]) or rows when transposed ([N, K]).
    zb = _channel(b_zp, n, [-1, 1] if trans_b else [-1], "b_zp")
    a = a_q.to(torch.float64)
    b = b_q.to(torch.float64)
    if a_zp is not None:
        a = a - _per_tensor(a_zp, "a_zp")
    if zb is not None:
        b = b - zb
    acc = torch.matmul(a, b.transpose(-1, -2) if trans_b else b)  # [..., M, N]
    scale = _per_tensor(a_scale, "a_scale") * _channel(b_scale, n, [-1], "b_scale")
    y = _finish(acc, scale, bias, [-1], residual, activation, activation_params, a_scale.dtype,
                out_scale, out_zp, out_dtype, _checked_mid("QMatMul", mid_scale, mid_zp), mid_before_bias=True)
    return y if table is None else looked_up(y, table)


def code_table(program: Any, codes: torch.dtype, outputs: Sequence[str] | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """A kiln::Pointwise program of one 8-bit input on each of the 256 bit patterns of `codes`
    (entry i: the code whose bits are i), computed by the reference on `device`: the table that
    looked_up reads (precision/fuse_code_table.py) and the lookup kernel's (pointwise_table.py)."""
    bits = torch.arange(256, dtype=torch.int32, device=device).to(torch.uint8).view(codes)
    values = pointwise(bits, program=program, outputs=outputs, n_outputs=1).reshape(-1)
    if values.numel() != 256:   # not elementwise in its input alone
        raise ValueError(f"kiln::Pointwise table of {values.numel()} entries for 256 codes")
    return values.contiguous()


def looked_up(codes: Tensor, table: Tensor) -> Tensor:
    """table[bits of each code]: `codes` int8/uint8, `table` the 256 outputs of the bit patterns."""
    if codes.dtype not in (torch.int8, torch.uint8) or table.numel() != 256:
        raise ValueError(f"a code table of 256 entries applies to int8/uint8 codes; got {codes.dtype} codes and "
                         f"{table.numel()} entries")
    return table.reshape(-1).to(codes.device)[codes.view(torch.uint8).long()]


@reference_op("QConv", domain="kiln")
def qconv(x_q: Tensor, w_q: Tensor, x_scale: Tensor, x_zp: Tensor | None, w_scale: Tensor,
          w_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
          out_scale: Tensor | None = None, out_zp: Tensor | None = None, residual_scale: Tensor | None = None,
          residual_zp: Tensor | None = None, x_quant_scale: Tensor | None = None, mid_scale: Tensor | None = None,
          mid_zp: Tensor | None = None, *, auto_pad: str = "NOTSET",
          dilations: Sequence[int] | None = None, group: int = 1, kernel_shape: Sequence[int] | None = None,
          pads: Sequence[int] | None = None, strides: Sequence[int] | None = None, activation: str = "",
          activation_params: Sequence[float] = (), out_dtype: int = 0, x_dtype: int = 0) -> Tensor:
    """Y = [Q](act(Conv(DQ(X), DQ(W)) + bias + residual)), exact accumulation (module docstring);
    with residual_scale the residual is 8-bit and dequantized first. With x_dtype (an ONNX type
    enum) X is float and quantized first, X_q = QuantizeLinear(X, x_quant_scale or else x_scale,
    x_zp) to that type, exactly the QuantizeLinear it stands for (precision/fuse_input_quantize.py:
    x_quant_scale is that QuantizeLinear's scale where it differs from x_scale, e.g. float32 before
    a float16 layer). With mid_scale (and mid_zp, int8/uint8; uint8 without one) the conv's value
    is quantized to those codes and back before the residual is added (module docstring).

    Padding holds x_zp (DQ(x_zp) = 0, as the float Conv pads with 0); W [M, C/group, *K].
    """
    if x_dtype:
        x_q = quantize_linear(x_q, x_scale if x_quant_scale is None else x_quant_scale, x_zp, output_dtype=x_dtype)
    elif x_quant_scale is not None:
        raise ValueError("kiln::QConv has x_quant_scale but no x_dtype: X is already quantized; drop x_quant_scale")
    m, rank = w_q.shape[0], w_q.dim()
    _check_inputs("QConv", x_q, w_q, x_zp, w_zp, math.prod(w_q.shape[1:]))
    x = x_q.to(torch.float64)
    w = w_q.to(torch.float64)
    if x_zp is not None:
        x = x - _per_tensor(x_zp, "x_zp")
    zw = _channel(w_zp, m, [-1] + [1] * (rank - 1), "w_zp")
    if zw is not None:
        w = w - zw
    acc = conv(x, w, None, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
               pads=pads, strides=strides)  # [N, M, *D]
    per_channel = [1, -1] + [1] * (rank - 2)
    scale = _per_tensor(x_scale, "x_scale") * _channel(w_scale, m, per_channel, "w_scale")
    if residual is None and (residual_scale is not None or residual_zp is not None):
        raise ValueError("kiln::QConv has residual_scale/residual_zp but no residual; give the residual too")
    r = None if residual is None else dequantized_residual(residual, residual_scale, residual_zp)
    mid = _checked_mid("QConv", mid_scale, mid_zp)
    return _finish(acc, scale, bias, per_channel, r, activation, activation_params, x_scale.dtype,
                   out_scale, out_zp, out_dtype, mid)

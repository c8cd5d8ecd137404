"""Casts: Cast, CastLike and BitCast, for every element type kiln holds.

Rounding follows the spec per target: float8 types round to nearest even with the
`saturate` table (kiln clamps or makes NaN itself where torch's conversion would not),
float8 e8m0 by `round_mode`, float4 e2m1 to nearest even with saturation at 6; the sub-byte
integers (held widened in int8/uint8) truncate floats toward zero and wrap to their width.
"""
from __future__ import annotations

import math

import torch

from kiln.ir.dtypes import from_onnx
from kiln.kernels.reference.common import (
    FLOAT8_LIMITS,
    float_like,
    is_wide_unsigned,
    round_to_float4e2m1,
    round_to_float8,
    round_to_float8e8m0,
    unsigned_bits,
    wrap_int_bits,
)
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


# Types kiln holds widened: (bits, signed) of the integer ones.
_SUB_BYTE_INTS = {"int4": (4, True), "uint4": (4, False), "int2": (2, True), "uint2": (2, False)}


def _to_fp8(x: Tensor, dtype: torch.dtype, saturate: int) -> Tensor:
    """Round to a float8 type (to nearest even) with the spec's saturation rules."""
    if x.dtype.is_floating_point:
        xf = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    else:
        xf = x.to(torch.float64)  # exact for every int32, rounds once for larger ints
    return round_to_float8(xf, dtype, saturate)


def cast_to(x: Tensor, dtype: torch.dtype, saturate: int = 1) -> Tensor:
    """Convert `x` to `dtype` with ONNX rules (float -> int truncates, fp8 saturation)."""
    if x.dtype == dtype:
        return x
    if x.dtype in FLOAT8_LIMITS:
        x = x.to(torch.float32)
        if x.dtype == dtype:
            return x
    if dtype in FLOAT8_LIMITS:
        return _to_fp8(x, dtype, saturate)
    # torch's float -> int conversion truncates toward zero, matching the spec.
    return x.to(dtype)


def _cast_to_held(x: Tensor, name: str, saturate: int, round_mode: str) -> Tensor | None:
    """Cast to a type kiln holds widened (int4/uint4/int2/uint2, float4_e2m1, float8_e8m0),
    put on that type's grid; None for any other type."""
    if name in _SUB_BYTE_INTS:
        bits, signed = _SUB_BYTE_INTS[name]
        if x.dtype.is_floating_point:
            # Float -> int truncates toward zero first (NaN/inf are undefined: they give 0).
            xf = x.to(torch.float64)
            x = torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf)).trunc()
        wrapped = wrap_int_bits(unsigned_bits(x) if is_wide_unsigned(x) else x, bits, signed)
        return wrapped.to(torch.int8 if signed else torch.uint8)
    if name == "float4_e2m1":
        return round_to_float4e2m1(float_like(x).to(torch.float32))
    if name == "float8_e8m0":
        return round_to_float8e8m0(float_like(x).to(torch.float32), saturate, round_mode)
    return None


@reference_op("Cast")
def cast(x: Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """Y = X converted to the TensorProto type `to` (floats to ints truncate toward zero).

    float8 targets round to nearest even and saturate (or not) per `saturate`;
    float8e8m0 rounds per `round_mode`. Sub-byte and MX targets come out on their grid
    in kiln's widened holding type (int4 -> int8 with values in [-8, 7], ...).
    """
    held = _cast_to_held(x, from_onnx(to).name, saturate, round_mode)
    if held is not None:
        return held
    return cast_to(x, from_onnx(to).torch, saturate)


@reference_op("CastLike")
def cast_like(x: Tensor, target_type: Tensor, *, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """Y = X converted to the dtype of `target_type` (same rules as Cast).

    Only the holding dtype of `target_type` is known here, so a widened target
    (int4 in int8, float4_e2m1 in float32, ...) is cast to its holding type.
    """
    return cast_to(x, target_type.dtype, saturate)


def _held_bits(x: Tensor, name: str) -> Tensor:
    """The raw bits (as int64, low bits) of `x` whose ONNX type is the widened `name`."""
    if name in _SUB_BYTE_INTS:
        bits = _SUB_BYTE_INTS[name][0]
        return x.to(torch.int64) & ((1 << bits) - 1)
    if name == "float4_e2m1":
        a = x.abs()
        # Code of |x| on the grid: 0, .5, 1, 1.5 -> 0..3, 2, 3 -> 4, 5, 4, 6 -> 6, 7.
        code = torch.where(a < 2, a * 2, torch.where(a < 4, a + 2, a / 2 + 4)).to(torch.int64)
        return code | (torch.signbit(x).to(torch.int64) << 3)
    if name == "float8_e8m0":  # the float32 exponent field: 2**-127 has 0, NaN has 0xFF
        return (x.to(torch.float32).view(torch.int32).to(torch.int64) >> 23) & 0xFF
    raise ValueError(f"{name} is not a widened type")


def _from_held_bits(bits: Tensor, name: str) -> Tensor:
    """Values of the widened ONNX type `name` whose raw bits are the low bits of `bits`."""
    if name in _SUB_BYTE_INTS:
        width, signed = _SUB_BYTE_INTS[name]
        return wrap_int_bits(bits, width, signed).to(torch.int8 if signed else torch.uint8)
    if name == "float4_e2m1":
        code = bits & 7
        e, m = code >> 1, (code & 1).to(torch.float32)
        mag = torch.where(e == 0, m * 0.5, torch.ldexp(1 + m * 0.5, e - 1))
        return torch.where((bits & 8) != 0, -mag, mag)
    if name == "float8_e8m0":
        e = bits & 0xFF
        pattern = torch.where(e == 0, 1 << 22, e << 23).to(torch.int32)
        value = pattern.view(torch.float32)
        return torch.where(e == 0xFF, torch.full_like(value, math.nan), value)
    raise ValueError(f"{name} is not a widened type")


def _held_name(x: Tensor, target_bits: int) -> str | None:
    """The widened ONNX type `x` must be, given BitCast's equal widths; None if it is plain."""
    width = torch.finfo(x.dtype).bits if x.dtype.is_floating_point else (
        8 if x.dtype == torch.bool else torch.iinfo(x.dtype).bits)
    if width == target_bits:
        return None
    by_width = {(4, torch.int8): "int4", (4, torch.uint8): "uint4", (4, torch.float32): "float4_e2m1",
                (2, torch.int8): "int2", (2, torch.uint8): "uint2", (8, torch.float32): "float8_e8m0"}
    name = by_width.get((target_bits, x.dtype))
    if name is None:
        raise ValueError(f"BitCast: input of {width} bits cannot become a {target_bits}-bit type")
    return name


@reference_op("BitCast")
def bit_cast(x: Tensor, *, to: int) -> Tensor:
    """Y = the bits of X reinterpreted as the TensorProto type `to` (same bit width, same shape)."""
    target = from_onnx(to)
    source = _held_name(x, target.itemsize_bits)
    if target.torch_name != target.name:  # target held widened
        raw = _held_bits(x, source) if source else x.view(torch.uint8).to(torch.int64)
        return _from_held_bits(raw, target.name)
    if source is not None:  # widened source, plain 8-bit target
        return _held_bits(x, source).to(torch.uint8).view(target.torch)
    return x.view(target.torch)

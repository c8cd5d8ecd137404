"""Element-wise arithmetic, math, comparison, logic, casts and the variadic reductions.

Binary ops broadcast numpy-style (torch does the same). Activations live in
activations.py. Simple one-torch-call ops are registered from tables below so that
each op is one line; anything with a rule of its own is a function.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.common import as_scalar, float_like
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _register_table(table: dict[str, tuple[Callable[..., Tensor], str]]) -> None:
    """Register each `op: (fn, doc)` of a table; `doc` becomes the op's first doc line."""
    for op, (impl, doc) in table.items():
        def fn(*inputs: Tensor, _impl: Callable[..., Tensor] = impl) -> Tensor:
            return _impl(*inputs)
        fn.__doc__ = doc
        fn.__name__ = fn.__qualname__ = op
        reference_op(op)(fn)


def _float_op(impl: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Apply a float-only torch function to any dtype; ints compute in float64 and cast back."""
    def run(x: Tensor) -> Tensor:
        return impl(float_like(x)).to(x.dtype)
    return run


_UNARY = {
    "Neg": (torch.neg, "Y = -X, element-wise."),
    "Abs": (torch.abs, "Y = |X|."),
    "Sqrt": (_float_op(torch.sqrt), "Y = sqrt(X); NaN for negative X."),
    "Reciprocal": (torch.reciprocal, "Y = 1 / X."),
    "Exp": (_float_op(torch.exp), "Y = e**X."),
    "Log": (_float_op(torch.log), "Y = natural log of X."),
    "Sin": (torch.sin, "Y = sin(X)."),
    "Cos": (torch.cos, "Y = cos(X)."),
    "Tan": (torch.tan, "Y = tan(X)."),
    "Asin": (torch.asin, "Y = arcsin(X)."),
    "Acos": (torch.acos, "Y = arccos(X)."),
    "Atan": (torch.atan, "Y = arctan(X)."),
    "Sinh": (torch.sinh, "Y = sinh(X)."),
    "Cosh": (torch.cosh, "Y = cosh(X)."),
    "Asinh": (torch.asinh, "Y = arsinh(X)."),
    "Acosh": (torch.acosh, "Y = arcosh(X)."),
    "Atanh": (torch.atanh, "Y = artanh(X)."),
    "Erf": (_float_op(torch.erf), "Y = erf(X), the Gauss error function."),
    "Floor": (torch.floor, "Y = floor(X), rounding toward -inf."),
    "Ceil": (torch.ceil, "Y = ceil(X), rounding toward +inf."),
    # torch.round rounds half to even, exactly as the ONNX spec asks.
    "Round": (torch.round, "Y = X rounded to the nearest integer, halves to even."),
    "Sign": (torch.sign, "Y = -1, 0 or 1 by the sign of X (NaN stays NaN)."),
    "IsNaN": (torch.isnan, "Y = whether X is NaN (bool)."),
    "Not": (torch.logical_not, "Y = logical not of bool X."),
    "BitwiseNot": (torch.bitwise_not, "Y = bitwise complement of integer X."),
    "Identity": (lambda x: x, "Y = X (the same tensor, not a copy)."),
}

_BINARY = {
    "Add": (torch.add, "C = A + B, broadcasting."),
    "Sub": (torch.sub, "C = A - B, broadcasting."),
    "Mul": (torch.mul, "C = A * B, broadcasting."),
    "Equal": (torch.eq, "C = (A == B), broadcasting, bool."),
    "Greater": (torch.gt, "C = (A > B), broadcasting, bool."),
    "GreaterOrEqual": (torch.ge, "C = (A >= B), broadcasting, bool."),
    "Less": (torch.lt, "C = (A < B), broadcasting, bool."),
    "LessOrEqual": (torch.le, "C = (A <= B), broadcasting, bool."),
    "And": (torch.logical_and, "C = A and B for bool tensors, broadcasting."),
    "Or": (torch.logical_or, "C = A or B for bool tensors, broadcasting."),
    "Xor": (torch.logical_xor, "C = A xor B for bool tensors, broadcasting."),
    "BitwiseAnd": (torch.bitwise_and, "C = A & B bitwise, broadcasting."),
    "BitwiseOr": (torch.bitwise_or, "C = A | B bitwise, broadcasting."),
    "BitwiseXor": (torch.bitwise_xor, "C = A ^ B bitwise, broadcasting."),
}

_register_table(_UNARY)
_register_table(_BINARY)


@reference_op("Div")
def div(a: Tensor, b: Tensor) -> Tensor:
    """C = A / B, broadcasting; integer division truncates toward zero (as in C)."""
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@reference_op("Mod")
def mod(a: Tensor, b: Tensor, *, fmod: int = 0) -> Tensor:
    """C = A mod B: sign of the divisor (fmod=0, Python %) or of the dividend (fmod=1, C fmod)."""
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@reference_op("Pow")
def pow_(x: Tensor, y: Tensor) -> Tensor:
    """Z = X ** Y, broadcasting; the result keeps X's dtype whatever Y's dtype is."""
    if x.dtype.is_floating_point:
        return torch.pow(x, y.to(x.dtype))
    if y.dtype.is_floating_point:
        # int base, float exponent: numpy computes in float64 and the spec casts back.
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)
    return torch.pow(x, y.to(x.dtype))


@reference_op("IsInf")
def is_inf(x: Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> Tensor:
    """Y = whether X is +inf (if detect_positive) or -inf (if detect_negative), bool."""
    out = torch.zeros_like(x, dtype=torch.bool)
    if detect_positive:
        out |= torch.isposinf(x)
    if detect_negative:
        out |= torch.isneginf(x)
    return out


@reference_op("BitShift")
def bit_shift(x: Tensor, y: Tensor, *, direction: str) -> Tensor:
    """Z = X << Y (direction "LEFT") or X >> Y ("RIGHT") on unsigned integers."""
    if direction == "LEFT":
        return torch.bitwise_left_shift(x, y)
    if direction == "RIGHT":
        return torch.bitwise_right_shift(x, y)
    raise ValueError(f"BitShift direction must be 'LEFT' or 'RIGHT', got {direction!r}")


@reference_op("Where")
def where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Output = X where condition else Y, broadcasting all three."""
    return torch.where(condition.to(torch.bool), x, y)


def _variadic(inputs: tuple[Tensor, ...], combine: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    if not inputs:
        raise ValueError("variadic op needs at least one input")
    return functools.reduce(combine, inputs)


@reference_op("Max")
def max_(*inputs: Tensor) -> Tensor:
    """Element-wise maximum of all inputs, broadcasting; NaN propagates."""
    return _variadic(inputs, torch.maximum)


@reference_op("Min")
def min_(*inputs: Tensor) -> Tensor:
    """Element-wise minimum of all inputs, broadcasting; NaN propagates."""
    return _variadic(inputs, torch.minimum)


@reference_op("Sum")
def sum_(*inputs: Tensor) -> Tensor:
    """Element-wise sum of all inputs, broadcasting."""
    return _variadic(inputs, torch.add)


@reference_op("Mean")
def mean(*inputs: Tensor) -> Tensor:
    """Element-wise mean of all inputs, broadcasting."""
    return _variadic(inputs, torch.add) / len(inputs)


# Largest finite value of each float8 type: Cast with saturate=1 clamps to it.
_FP8_MAX = {
    torch.float8_e4m3fn: 448.0,
    torch.float8_e5m2: 57344.0,
}


def cast_to(x: Tensor, dtype: torch.dtype, saturate: int = 1) -> Tensor:
    """Convert `x` to `dtype` with ONNX rules (float -> int truncates, fp8 saturation)."""
    if x.dtype == dtype:
        return x
    if dtype in _FP8_MAX:
        xf = x if x.dtype == torch.float64 else x.to(torch.float32)
        if saturate:
            # clamp keeps NaN and maps +-inf to the largest finite value, as the spec asks.
            bound = _FP8_MAX[dtype]
            xf = torch.clamp(xf, -bound, bound)
        elif dtype == torch.float8_e4m3fn:
            # e4m3fn has no infinity: out-of-range values become NaN without saturation.
            xf = torch.where(xf.abs() > _FP8_MAX[dtype], torch.full_like(xf, math.nan), xf)
        return xf.to(dtype)
    if x.dtype in _FP8_MAX:
        x = x.to(torch.float32)
    # torch's float -> int conversion truncates toward zero, matching the spec.
    return x.to(dtype)


@reference_op("Cast")
def cast(x: Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """Y = X converted to the TensorProto type `to` (floats to ints truncate toward zero).

    `round_mode` only concerns float8e8m0, which kiln does not support; it is accepted
    so that models carrying the attribute still load.
    """
    return cast_to(x, onnx_to_torch(to), saturate)


@reference_op("CastLike")
def cast_like(x: Tensor, target_type: Tensor, *, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """Y = X converted to the dtype of `target_type` (same rules as Cast)."""
    return cast_to(x, target_type.dtype, saturate)


@reference_op("Dropout")
def dropout(data: Tensor, ratio: Tensor | None = None, training_mode: Tensor | None = None, *,
            seed: int | None = None) -> tuple[Tensor, Tensor]:
    """(output, mask): identity and an all-true mask at inference.

    The result always holds two tensors; the executor zips results with the node's
    outputs, so a node with only `output` simply ignores the mask. In training mode the
    drop pattern is random by definition: it is drawn from `seed`, so it is
    reproducible here but cannot match another runtime bit for bit.
    """
    if training_mode is None or not bool(as_scalar(training_mode)):
        return data, torch.ones_like(data, dtype=torch.bool)
    p = 0.5 if ratio is None else float(as_scalar(ratio))
    if p == 0.0:
        return data, torch.ones_like(data, dtype=torch.bool)
    gen = torch.Generator(device=data.device)
    gen.manual_seed(0 if seed is None else int(seed))
    mask = torch.rand(data.shape, generator=gen, device=data.device) >= p
    return data * mask.to(data.dtype) / (1.0 - p), mask

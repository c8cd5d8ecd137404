"""Element-wise arithmetic, math, comparison, logic and the variadic reductions.

Binary ops broadcast numpy-style (torch does the same). Activations live in
activations.py, casts in casts.py. Simple one-torch-call ops are registered from tables
below so that each op is one line; anything with a rule of its own is a function.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from kiln.kernels.reference.common import (
    as_scalar,
    float_like,
    from_unsigned_bits,
    from_unsigned_ordered,
    is_wide_unsigned,
    unsigned_bits,
    unsigned_ordered,
)
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


def _wrapping(impl: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """`impl` made to work on uint16/32/64 (which torch lacks kernels for): computed on
    int64 stand-ins and cast back, so the result wraps modulo 2**bits like the unsigned type."""
    def run(a: Tensor, b: Tensor) -> Tensor:
        if is_wide_unsigned(a):
            return from_unsigned_bits(impl(unsigned_bits(a), unsigned_bits(b)), a.dtype)
        return impl(a, b)
    return run


def _ordered(impl: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Comparison `impl` made to work on uint16/32/64 through order-preserving int64 keys."""
    def run(a: Tensor, b: Tensor) -> Tensor:
        if is_wide_unsigned(a):
            return impl(unsigned_ordered(a), unsigned_ordered(b))
        return impl(a, b)
    return run


_SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def _bitwise_not(x: Tensor) -> Tensor:
    if x.dtype in _SIGNED_TWIN:  # same bits through the signed type of the same width
        return torch.bitwise_not(x.view(_SIGNED_TWIN[x.dtype])).view(x.dtype)
    return torch.bitwise_not(x)


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
    "BitwiseNot": (_bitwise_not, "Y = bitwise complement of integer X."),
}

_BINARY = {
    "Add": (_wrapping(torch.add), "C = A + B, broadcasting; integers wrap around."),
    "Sub": (_wrapping(torch.sub), "C = A - B, broadcasting; integers wrap around."),
    "Mul": (_wrapping(torch.mul), "C = A * B, broadcasting; integers wrap around."),
    "Equal": (torch.eq, "C = (A == B), broadcasting, bool."),
    "Greater": (_ordered(torch.gt), "C = (A > B), broadcasting, bool."),
    "GreaterOrEqual": (_ordered(torch.ge), "C = (A >= B), broadcasting, bool."),
    "Less": (_ordered(torch.lt), "C = (A < B), broadcasting, bool."),
    "LessOrEqual": (_ordered(torch.le), "C = (A <= B), broadcasting, bool."),
    "And": (torch.logical_and, "C = A and B for bool tensors, broadcasting."),
    "Or": (torch.logical_or, "C = A or B for bool tensors, broadcasting."),
    "Xor": (torch.logical_xor, "C = A xor B for bool tensors, broadcasting."),
    "BitwiseAnd": (_wrapping(torch.bitwise_and), "C = A & B bitwise, broadcasting."),
    "BitwiseOr": (_wrapping(torch.bitwise_or), "C = A | B bitwise, broadcasting."),
    "BitwiseXor": (_wrapping(torch.bitwise_xor), "C = A ^ B bitwise, broadcasting."),
}

_register_table(_UNARY)
_register_table(_BINARY)


@reference_op("Identity")
def identity(x: Tensor | list | None = None) -> Tensor | list | None:
    """Y = X: the same tensor (not a copy), sequence (list) or absent optional (None)."""
    return x


_INT64_MAX = 2 ** 63 - 1


def _udivmod64(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Unsigned 64-bit (quotient, remainder) of int64 bit patterns `a` / `b` (b != 0).

    Long division by halves: divide a >>> 1 (now non-negative) by b, double, then fix
    the quotient by one; a divisor of 2**63 or more gives a quotient of 0 or 1.
    """
    big = b < 0
    bs = torch.where(big, torch.ones_like(b), b)
    q = torch.div((a >> 1) & _INT64_MAX, bs, rounding_mode="trunc") << 1
    r = a - q * bs
    fix = (unsigned_ordered(r.view(torch.uint64)) >= unsigned_ordered(bs.view(torch.uint64))).to(torch.int64)
    q, r = q + fix, r - fix * bs
    qb = (unsigned_ordered(a.view(torch.uint64)) >= unsigned_ordered(b.view(torch.uint64))).to(torch.int64)
    return torch.where(big, qb, q), torch.where(big, a - qb * b, r)


def _int_divmod(a: Tensor, b: Tensor, fmod: bool) -> tuple[Tensor, Tensor]:
    """(truncated quotient, remainder) of integer tensors; division by zero gives 0, 0 like numpy.

    The remainder has the divisor's sign (Python %) unless `fmod` (sign of the dividend).
    uint16/32/64 compute on int64 stand-ins.
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    zero = b == 0
    if is_wide_unsigned(a):
        ua, ub = unsigned_bits(a), unsigned_bits(b)
        ub = torch.where(zero, torch.ones_like(ub), ub)
        if dtype == torch.uint64:
            q, r = _udivmod64(ua, ub)
        else:
            q = torch.div(ua, ub, rounding_mode="trunc")
            r = ua - q * ub
        q, r = (torch.where(zero, torch.zeros_like(v), v) for v in (q, r))
        return from_unsigned_bits(q, dtype), from_unsigned_bits(r, dtype)
    safe = torch.where(zero, torch.ones_like(b), b)
    q = torch.div(a, safe, rounding_mode="trunc")
    r = torch.fmod(a, safe) if fmod else torch.remainder(a, safe)
    return (torch.where(zero, torch.zeros_like(q), q), torch.where(zero, torch.zeros_like(r), r))


@reference_op("Div")
def div(a: Tensor, b: Tensor) -> Tensor:
    """C = A / B, broadcasting; integer division truncates toward zero (as in C), x / 0 = 0."""
    if a.dtype.is_floating_point:
        return a / b
    return _int_divmod(a, b, fmod=False)[0]


@reference_op("Mod")
def mod(a: Tensor, b: Tensor, *, fmod: int = 0) -> Tensor:
    """C = A mod B: sign of the divisor (fmod=0, Python %) or of the dividend (fmod=1, C fmod)."""
    if a.dtype.is_floating_point:
        return torch.fmod(a, b) if fmod else torch.remainder(a, b)
    return _int_divmod(a, b, fmod=bool(fmod))[1]


@reference_op("Pow")
def pow_(x: Tensor, y: Tensor) -> Tensor:
    """Z = X ** Y, broadcasting; the result keeps X's dtype whatever Y's dtype is."""
    if is_wide_unsigned(y):
        y = y.to(torch.float64) if x.dtype.is_floating_point else unsigned_bits(y)
    if x.dtype.is_floating_point:
        return torch.pow(x, y.to(x.dtype))
    if y.dtype.is_floating_point:
        # int base, float exponent: numpy computes in float64 and the spec casts back.
        return torch.pow(float_like(x), y.to(torch.float64)).to(x.dtype)
    if is_wide_unsigned(x):
        return from_unsigned_bits(torch.pow(unsigned_bits(x), y.to(torch.int64)), x.dtype)
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
    if direction not in ("LEFT", "RIGHT"):
        raise ValueError(f"BitShift direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    if not is_wide_unsigned(x):
        shift = torch.bitwise_left_shift if direction == "LEFT" else torch.bitwise_right_shift
        return shift(x, y)
    ux, uy = unsigned_bits(x), unsigned_bits(y)
    if direction == "LEFT":
        return from_unsigned_bits(torch.bitwise_left_shift(ux, uy), x.dtype)
    if x.dtype != torch.uint64:  # widened values are non-negative: arithmetic = logical shift
        return from_unsigned_bits(torch.bitwise_right_shift(ux, uy), x.dtype)
    # Logical shift of 64 bits: shift arithmetically, then clear the copies of the sign bit.
    ux, uy = torch.broadcast_tensors(ux, uy)
    keep = torch.bitwise_left_shift(torch.ones_like(uy), 64 - uy) - 1  # low 64 - y bits
    shifted = torch.bitwise_right_shift(ux, uy) & keep
    return from_unsigned_bits(torch.where(uy == 0, ux, shifted), x.dtype)


@reference_op("Where")
def where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Output = X where condition else Y, broadcasting all three."""
    return torch.where(condition.to(torch.bool), x, y)


def _variadic(inputs: tuple[Tensor, ...], combine: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    if not inputs:
        raise ValueError("variadic op needs at least one input")
    return functools.reduce(combine, inputs)


def _extremum(inputs: tuple[Tensor, ...], pick: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    if inputs and is_wide_unsigned(inputs[0]):
        keys = tuple(unsigned_ordered(t) for t in inputs)
        return from_unsigned_ordered(_variadic(keys, pick), inputs[0].dtype)
    return _variadic(inputs, pick)


@reference_op("Max")
def max_(*inputs: Tensor) -> Tensor:
    """Element-wise maximum of all inputs, broadcasting; NaN propagates."""
    return _extremum(inputs, torch.maximum)


@reference_op("Min")
def min_(*inputs: Tensor) -> Tensor:
    """Element-wise minimum of all inputs, broadcasting; NaN propagates."""
    return _extremum(inputs, torch.minimum)


@reference_op("Sum")
def sum_(*inputs: Tensor) -> Tensor:
    """Element-wise sum of all inputs, broadcasting."""
    return _variadic(inputs, _wrapping(torch.add))


@reference_op("Mean")
def mean(*inputs: Tensor) -> Tensor:
    """Element-wise mean of all inputs, broadcasting."""
    return _variadic(inputs, torch.add) / len(inputs)


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

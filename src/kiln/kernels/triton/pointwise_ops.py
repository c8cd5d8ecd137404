"""The element-wise ops the Pointwise code generator can write, one rule per op.

A rule says how the op's operands are typed before it runs (`operands`), which operand
types it accepts (`domain`) and the Triton expression it becomes (`emit`). Operand typing
follows the reference ops (kiln.kernels.reference): "result" converts every operand to the
op's result dtype (what torch's type promotion does for arithmetic), "common" to the operands'
promoted dtype (comparisons, whose result is bool), "first" to the first operand's dtype (Clip
bounds, Pow's exponent), "bool" to bool (logical ops), "where" is Where's (bool, result,
result) and "none" leaves them as they are (Cast). Floats are held in float32 in the kernel,
so `emit` writes float32 math; an op not in RULES makes the generator refuse the program.

Invariant: `emit` gets operand expressions already converted, and returns an expression of the
kernel type of the op's result dtype (float32 for float results, int1 for bool).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.quantize import division_scale
from kiln.kernels.triton.compiled import COMPILED, product_rn  # noqa: F401 - the generated source imports it
from kiln.kernels.triton.quantize import PRECISIONS, _in_precision, _saturate_round, divide, shifted_round

try:                       # Triton 3.2 on: the libdevice calls of the backend in use
    from triton.language.extra import libdevice
except ImportError:        # Triton 3.0 / 3.1
    from triton.language.extra.cuda import libdevice


@triton.jit
def exp_f32(x):
    """e**x as torch computes it on the GPU (CUDA's expf: libdevice's, within 2 ulp), not as tl.exp
    (ex2.approx of x * log2(e), whose error grows with |x|): an exponential followed by a
    QuantizeLinear (ONNX Runtime's Sigmoid -> Q/DQ -> Mul -> Q of a SiLU) must give the
    reference's codes. In the interpreter tl.exp (numpy's, correctly rounded in practice)."""
    if COMPILED:
        r = libdevice.exp(x)
    else:
        r = tl.exp(x)
    return r


@triton.jit
def log_f32(x):
    """ln x as torch computes it on the GPU (CUDA's logf, libdevice's), as exp_f32."""
    if COMPILED:
        r = libdevice.log(x)
    else:
        r = tl.log(x)
    return r


@triton.jit
def erf_f32(x):
    """erf x as torch computes it on the GPU (CUDA's erff, libdevice's), named rather than left to
    how this Triton lowers tl.erf: ONNX Runtime's QDQ Gelu quantizes its Erf's output."""
    if COMPILED:
        r = libdevice.erf(x)
    else:
        r = tl.erf(x)
    return r


@triton.jit
def tanh_f32(x):
    # tanh(x) = sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) <= 1 (no overflow); near 0 the
    # series x - x^3/3 + 2x^5/15 avoids the cancellation in 1 - e.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    return tl.where(tl.abs(x) < 0.0625, x * (1.0 - x2 * (0.3333333333333333 - x2 * 0.13333333333333333)), t)


@triton.jit
def pow_f32(x, y):
    # x ** y as C's pow: |x| ** y through exp2/log2, the sign from an odd integer y, NaN for a
    # negative x and a non-integer y, and x ** 0 == 1 ** y == 1 (even for NaN).
    r = tl.exp2(y * tl.log2(tl.abs(x)))
    y_int = tl.floor(y) == y
    y_odd = y_int & (tl.floor(y * 0.5) * 2.0 != y)
    r = tl.where((x < 0) & y_odd, -r, r)
    r = tl.where((x < 0) & (~y_int), float("nan"), r)
    return tl.where((y == 0) | (x == 1), 1.0, r)


@triton.jit
def quantize_code(x, s, inv, zp, PREC: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """QuantizeLinear's integer code of x (held in float32), per tensor, as an int32 in [QMIN, QMAX]:
    the division in the scale's type (PREC, quantize.py's correctly rounded `divide` given inv = 1 / s),
    rounded half to even, plus the zero point, saturated (quantize.py's _saturate_round; its bits
    less those of 1.5 * 2^23 are the rounded value)."""
    v = _in_precision(divide(_in_precision(x, PREC), s, inv), PREC)
    return _saturate_round(v, (QMIN - zp) * 1.0, (QMAX - zp) * 1.0, zp) - 0x4B400000


@triton.jit
def dequantize_code(x, scale, zp, PREC: tl.constexpr):
    """DequantizeLinear per tensor of x (codes held in int32): (x - zp) * scale, the product rounded
    once to float32 and never contracted into a following add (compiled.product_rn), then (exact:
    a 16-bit scale's product fits float32) rounded to the scale's type PREC, as the reference
    rounds it."""
    return _in_precision(product_rn((x - zp).to(tl.float32), scale), PREC)


@triton.jit
def quantize_value(x, inv, zp, PREC: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """QuantizeLinear's code of x as a float32 (an integer in [QMIN, QMAX]), the quick way: x
    (rounded to the division's type PREC) times 1 / scale, the quotient rounded to PREC as
    quantize_code's, then half to even, plus the zero point, saturated; a NaN gives QMIN. The
    product is within a float32 ulp of the correctly rounded quotient, so a code differs from
    quantize_code's only where the quotient lies that close to a rounding boundary of PREC
    (EmitContext.exact). The shift less the zero point is one scalar: one add per element."""
    v = _in_precision(_in_precision(x, PREC) * inv, PREC)
    return shifted_round(v, (QMIN - zp) * 1.0, (QMAX - zp) * 1.0) - (12582912.0 - zp)


# The generated sources' import of the helpers the emitters below write (pointwise.py's kernel,
# pointwise_function.py's functions in qdq_attention.py's kernel).
EMITTED_IMPORT = ("from kiln.kernels.triton.pointwise_ops import (dequantize_code, erf_f32, exp_f32, in_precision,\n"
                  "    log_f32, pow_f32, product_rn, quantize_code, quantize_value, tanh_f32)")


class Unsupported(Exception):
    """The program (or one of its instructions) is outside what the generator writes."""


@dataclass(frozen=True, slots=True)
class EmitContext:
    attrs: dict[str, Any]
    consts: tuple[Any, ...]          # per operand: its value if it is an inlined constant, else None
    is_float: bool                   # whether the operands compute in float
    literal: Callable[[float], str] = field(default=repr)   # a float as Triton source
    dtypes: tuple[Any, ...] = ()     # the operands' torch dtypes (None where omitted)
    result: Any = None               # the result's torch dtype
    # False: QuantizeLinear by the scale's reciprocal (quantize_value, not correctly rounded) and
    # DequantizeLinear's code as float32 in one FMA, for a kernel whose tolerance allows a code
    # one step off now and then (kiln::QDQAttention's quick configs)
    exact: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    emit: Callable[[list[str], EmitContext], str]
    domain: str          # "float" | "num" (float or int, not bool) | "bool" | "any"
    operands: str = "result"


_NAN_ALL = "propagate_nan=tl.PropagateNan.ALL"


def _max(a: str, b: str) -> str:
    return f"tl.maximum({a}, {b}, {_NAN_ALL})"


def _min(a: str, b: str) -> str:
    return f"tl.minimum({a}, {b}, {_NAN_ALL})"


def _fold(args: list[str], combine: Callable[[str, str], str]) -> str:
    out = args[0]
    for a in args[1:]:
        out = combine(out, a)
    return out


def _attr(c: EmitContext, name: str, default: float) -> str:
    return c.literal(float(c.attrs.get(name, default)))


def _pow(a: list[str], c: EmitContext) -> str:
    x, y = a
    special = {1.0: x, 2.0: f"{x} * {x}", 3.0: f"{x} * {x} * {x}", -1.0: f"1.0 / {x}"}
    exponent = c.consts[1]
    if exponent is not None and float(exponent) in special:
        return special[float(exponent)]
    return f"pow_f32({x}, {y})"


def _gelu(a: list[str], c: EmitContext) -> str:
    (x,) = a
    approximate = c.attrs.get("approximate", "none")
    if approximate == "none":   # x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))
        return f"0.5 * {x} * (1.0 + erf_f32({x} * {math.sqrt(0.5)!r}))"
    if approximate == "tanh":   # x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        return f"0.5 * {x} * (1.0 + tanh_f32({math.sqrt(2 / math.pi)!r} * ({x} + 0.044715 * {x} * {x} * {x})))"
    raise Unsupported(f"Gelu approximate={approximate!r}")


def _clip(a: list[str], c: EmitContext) -> str:
    out = a[0]
    if len(a) > 1 and a[1] is not None:
        out = _max(out, a[1])
    if len(a) > 2 and a[2] is not None:
        out = _min(out, a[2])
    return out


def _is_inf(a: list[str], c: EmitContext) -> str:
    (x,) = a
    terms = []
    if int(c.attrs.get("detect_positive", 1)):
        terms.append(f'({x} == float("inf"))')
    if int(c.attrs.get("detect_negative", 1)):
        terms.append(f'({x} == float("-inf"))')
    return " | ".join(terms) if terms else f"({x} != {x}) & ({x} == {x})"


def _softplus(x: str) -> str:  # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), no overflow
    return f"(tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x}))))"


def _clamp01(e: str) -> str:
    return _min(_max(e, "0.0"), "1.0")


def _elu_neg(x: str, alpha: str) -> str:
    return f"{alpha} * (tl.exp({x}) - 1.0)"


def _celu(a: list[str], c: EmitContext) -> str:  # max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
    x, alpha = a[0], _attr(c, "alpha", 1.0)
    return f"tl.where({x} < 0, 0.0, {x}) + {_min(_elu_neg(f'{x} / {alpha}', alpha), '0.0')}"


def _shrink(a: list[str], c: EmitContext) -> str:  # x + bias below -lambd, x - bias above lambd, else 0
    x, lambd, bias = a[0], _attr(c, "lambd", 0.5), _attr(c, "bias", 0.0)
    return f"tl.where({x} < -{lambd}, {x} + {bias}, tl.where({x} > {lambd}, {x} - {bias}, 0.0))"


_BYTES = {torch.int8: (-128, 127), torch.uint8: (0, 255)}     # the 8-bit types Q/DQ take here
_PREC = PRECISIONS     # quantize.py's division types and their codes
in_precision = _in_precision   # for the generated source: x rounded to a 16-bit type, held in float32


def rounded(expr: str, dtype: torch.dtype) -> str:
    """A float held in float32 rounded to its 16-bit dtype (as the reference holds it)."""
    return f"in_precision({expr}, {_PREC[dtype]})" if _PREC.get(dtype) else expr


def as_the_reference_rounds(expr: str, op: str, operands: list[str], c: EmitContext) -> str:
    """`expr` rounded op by op as the reference computes it, for a program whose codes must equal
    the reference's (one with a QuantizeLinear): a 16-bit result rounded to its type, a float32
    product never contracted into a following add (product_rn). Held in float32 instead, ONNX
    Runtime's DQ -> Div -> Erf -> Q of a Gelu gave other codes in a few elements per thousand."""
    if op == "Mul" and c.result == torch.float32 and c.is_float:
        a, b = operands if c.consts[0] is None else operands[::-1]   # product_rn takes the tensor first
        expr = f"product_rn({a}, {b})"
    return rounded(expr, c.result)


def _dequantize(a: list[str], c: EmitContext) -> str:
    """(x - zp) * scale, per tensor, x and zp held in int32 (dequantize_code)."""
    x, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 else None
    if c.dtypes[0] not in _BYTES or c.result not in _PREC or c.dtypes[1] != c.result or \
            (zp is not None and c.dtypes[2] != c.dtypes[0]):
        raise Unsupported(f"DequantizeLinear of {c.dtypes[0]} to {c.result} (int8/uint8 per tensor, the scale's "
                          f"type, a zero point of the codes' type)")
    if not c.exact:   # x * scale - zp * scale in one FMA: exact for a 16-bit scale, as dequantize_code's product
        value = f"({x}.to(tl.float32) * {scale})" if zp is None else \
            f"tl.fma({x}.to(tl.float32), {scale}, -({zp} * {scale}))"
        return rounded(value, c.result)
    return f"dequantize_code({x}, {scale}, {zp or 0}, {_PREC[c.result]})"


def _quantize(a: list[str], c: EmitContext) -> str:
    """QuantizeLinear per tensor to int8/uint8 with a constant scale (quantize_code)."""
    if c.result not in _BYTES or c.consts[1] is None or c.dtypes[1] not in _PREC or c.dtypes[0] not in _PREC or \
            (len(a) > 2 and a[2] is not None and c.dtypes[2] != c.result):
        raise Unsupported(f"QuantizeLinear to {c.result} (int8/uint8, a constant float scale, float X, a zero "
                          f"point of the codes' type)")
    precision = int(c.attrs.get("precision", 0) or 0)
    prec = onnx_to_torch(precision) if precision else c.dtypes[1]
    if prec not in _PREC:
        raise Unsupported(f"QuantizeLinear dividing in {prec}")
    s, inv = division_scale(c.consts[1], c.dtypes[1], prec)
    zp = a[2] if len(a) > 2 and a[2] is not None else "0"
    qmin, qmax = _BYTES[c.result]
    if not c.exact:
        return f"quantize_value({a[0]}, {c.literal(inv)}, {zp}, {_PREC[prec]}, {qmin}, {qmax})"
    return (f"quantize_code({rounded(a[0], c.dtypes[0])}, {c.literal(s)}, {c.literal(inv)}, {zp}, "
            f"{_PREC[prec]}, {qmin}, {qmax})")


def _div(p: str, q: str) -> str:
    """p / q correctly rounded, as torch divides two tensors on the GPU (IEEE division in float32).
    Triton's `/` on float32 is the approximate division (div.full, two ulps): its quotient, rounded
    to a 16-bit result or quantized, then differs from the reference's in a few elements per
    million, and an integer output (ONNX Runtime's DQ -> Div -> Erf -> Q of a Gelu) must match
    exactly. (Mean divides by its count as torch does with a Python number: a product, unchanged.)"""
    return f"tl.math.div_rn({p}, {q})"


RULES: dict[str, Rule] = {
    # arithmetic (integers wrap, like the reference)
    "Add": Rule(lambda a, c: f"{a[0]} + {a[1]}", "num"),
    "Sub": Rule(lambda a, c: f"{a[0]} - {a[1]}", "num"),
    "Mul": Rule(lambda a, c: f"{a[0]} * {a[1]}", "num"),
    "Div": Rule(lambda a, c: _div(a[0], a[1]), "float"),   # integer division truncates: not here
    "Pow": Rule(_pow, "float", "first"),
    "Neg": Rule(lambda a, c: f"-{a[0]}", "num"),
    "Abs": Rule(lambda a, c: f"tl.abs({a[0]})", "num"),
    "Sign": Rule(lambda a, c: f"tl.where({a[0]} > 0, 1, tl.where({a[0]} < 0, -1, {a[0]}))", "num"),
    "Identity": Rule(lambda a, c: a[0], "any"),
    "Sum": Rule(lambda a, c: _fold(a, lambda p, q: f"{p} + {q}"), "num"),
    "Mean": Rule(lambda a, c: f"({_fold(a, lambda p, q: f'{p} + {q}')}) / {float(len(a))!r}", "float"),
    "Max": Rule(lambda a, c: _fold(a, _max), "num"),
    "Min": Rule(lambda a, c: _fold(a, _min), "num"),
    "Clip": Rule(_clip, "num", "first"),
    # math (float only: the reference computes integer inputs in float64 and casts back)
    "Sqrt": Rule(lambda a, c: f"tl.sqrt_rn({a[0]})", "float"),
    "Reciprocal": Rule(lambda a, c: _div("1.0", a[0]), "float"),
    "Exp": Rule(lambda a, c: f"exp_f32({a[0]})", "float"),
    "Log": Rule(lambda a, c: f"log_f32({a[0]})", "float"),
    "Erf": Rule(lambda a, c: f"erf_f32({a[0]})", "float"),
    "Floor": Rule(lambda a, c: f"tl.floor({a[0]})", "float"),
    "Ceil": Rule(lambda a, c: f"tl.ceil({a[0]})", "float"),
    # activations, as activations.py writes them
    "Tanh": Rule(lambda a, c: f"tanh_f32({a[0]})", "float"),
    "Sigmoid": Rule(lambda a, c: _div("1.0", f"(1.0 + exp_f32(-{a[0]}))"), "float"),   # torch's formula
    "Relu": Rule(lambda a, c: f"tl.where({a[0]} < 0, 0, {a[0]})", "num"),   # keeps NaN
    "LeakyRelu": Rule(lambda a, c: f"tl.where({a[0]} >= 0, {a[0]}, {a[0]} * {_attr(c, 'alpha', 0.01)})", "float"),
    "PRelu": Rule(lambda a, c: f"tl.where({a[0]} >= 0, {a[0]}, {a[0]} * {a[1]})", "float"),
    "ThresholdedRelu": Rule(lambda a, c: f"tl.where({a[0]} > {_attr(c, 'alpha', 1.0)}, {a[0]}, 0.0)", "float"),
    "Elu": Rule(lambda a, c: f"tl.where({a[0]} > 0, {a[0]}, {_elu_neg(a[0], _attr(c, 'alpha', 1.0))})", "float"),
    "Selu": Rule(lambda a, c: (f"{_attr(c, 'gamma', 1.05070102214813232421875)} * tl.where({a[0]} > 0, {a[0]}, "
                               f"{_elu_neg(a[0], _attr(c, 'alpha', 1.67326319217681884765625))})"), "float"),
    "Celu": Rule(_celu, "float"),
    "HardSigmoid": Rule(lambda a, c: _clamp01(f"{_attr(c, 'alpha', 0.2)} * {a[0]} + {_attr(c, 'beta', 0.5)}"), "float"),
    "HardSwish": Rule(lambda a, c: f"{a[0]} * {_clamp01(f'{a[0]} * {1.0 / 6.0!r} + 0.5')}", "float"),
    "Softplus": Rule(lambda a, c: _softplus(a[0]), "float"),
    "Softsign": Rule(lambda a, c: _div(a[0], f"(1.0 + tl.abs({a[0]}))"), "float"),
    "Mish": Rule(lambda a, c: f"{a[0]} * tanh_f32({_softplus(a[0])})", "float"),
    "Gelu": Rule(_gelu, "float"),
    "Shrink": Rule(_shrink, "float"),
    # comparisons and predicates (bool results)
    "Equal": Rule(lambda a, c: f"{a[0]} == {a[1]}", "any", "common"),
    "Greater": Rule(lambda a, c: f"{a[0]} > {a[1]}", "num", "common"),
    "GreaterOrEqual": Rule(lambda a, c: f"{a[0]} >= {a[1]}", "num", "common"),
    "Less": Rule(lambda a, c: f"{a[0]} < {a[1]}", "num", "common"),
    "LessOrEqual": Rule(lambda a, c: f"{a[0]} <= {a[1]}", "num", "common"),
    "IsNaN": Rule(lambda a, c: f"{a[0]} != {a[0]}", "float", "common"),
    "IsInf": Rule(_is_inf, "float", "common"),
    # logic: operands become bool (nonzero is true), like torch.logical_*
    "Not": Rule(lambda a, c: f"~{a[0]}", "bool", "bool"),
    "And": Rule(lambda a, c: f"{a[0]} & {a[1]}", "bool", "bool"),
    "Or": Rule(lambda a, c: f"{a[0]} | {a[1]}", "bool", "bool"),
    "Xor": Rule(lambda a, c: f"{a[0]} ^ {a[1]}", "bool", "bool"),
    "Where": Rule(lambda a, c: f"tl.where({a[0]}, {a[1]}, {a[2]})", "any", "where"),
    # per-tensor quantization to / from int8 and uint8 (8-bit values are held in int32)
    "QuantizeLinear": Rule(_quantize, "any", "none"),
    "DequantizeLinear": Rule(_dequantize, "any", "none"),
    # casts: the generator converts the operand itself (see pointwise.convert)
    "Cast": Rule(lambda a, c: a[0], "any", "none"),
    "CastLike": Rule(lambda a, c: a[0], "any", "none"),
}

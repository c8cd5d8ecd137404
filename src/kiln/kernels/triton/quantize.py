"""QuantizeLinear (per tensor) in Triton, and the rounding helpers the quantized GEMM's epilogue shares.

The oracle is QuantizeLinear (kernels/reference/quantize.py):

  Y = saturate(round_half_even(X / y_scale) + y_zero_point)      int8 / uint8
  Y = fp8(clamp(X / y_scale + y_zero_point, -448, 448))          float8_e4m3fn (saturate=1)

with the division done in the scale's type (or `precision`): X and y_scale are rounded to
it, divided, and the quotient rounded to it. The kernel divides in float32 with IEEE
division (div_rn) and rounds the quotient to float16/bfloat16 when that is the type: the
float32 quotient of two 16-bit values rounded once more is the correctly rounded 16-bit
quotient (24 >= 2 * 11 + 2 bits), which is what torch computes, so Y equals the reference
bit for bit. Every rounding is float32/bit arithmetic that is exact on the GPU and in the
interpreter alike (which has no libdevice rint, and whose bfloat16 and float8 casts do not
round to nearest even): half-to-even with floor, bfloat16 and the float8 grid on the bits;
the final cast then only stores a value the type holds.

Memory format: a non-overlapping, dense X (contiguous, channels_last, any permutation of
dims) is quantized in its storage order and Y gets X's strides, so a channels_last input
gives a channels_last output with no copy; other X are made contiguous first. The kernel
is one flat pass over numel elements (the parameters are per tensor, so order is free);
offsets are int64.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantize import _division_dtype, _quant_type

Tensor = torch.Tensor

IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The division's type (the scale's, or `precision`): code for the kernel.
PRECISIONS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Quantized types: saturation range (integers) or None (float8 e4m3fn, saturating at 448).
OUT_TYPES: dict[torch.dtype, tuple[float, float] | None] = {
    torch.int8: (-128.0, 127.0), torch.uint8: (0.0, 255.0), torch.float8_e4m3fn: None,
}
OUT_NAMES = frozenset({"int8", "uint8", "float8_e4m3fn"})

# The tuning space: elements per program and warps. A memory-bound pass: bigger blocks
# amortise the scale load, smaller ones fill the GPU on small tensors.
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK": 1024, "num_warps": 4},
    {"BLOCK": 2048, "num_warps": 4},
    {"BLOCK": 4096, "num_warps": 8},
)


@triton.jit
def round_half_even(x):
    """x rounded to the nearest integer, ties to even (float32 in, float32 out).

    f = floor(x) and d = x - f are exact in float32 (d in [0, 1)); round up when d > 1/2,
    or d == 1/2 and f is odd. |x| >= 2^23 is already an integer (d = 0); +-inf stays."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def round_to_bfloat16(x):
    """float32 x rounded to the nearest bfloat16 (ties to even), held in float32.

    On the bits: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits (a carry
    into the exponent is the correct rounding up, to infinity past the largest finite).
    Done here, not by a cast, because the interpreter's float32 -> bfloat16 cast truncates."""
    bits = x.to(tl.int32, bitcast=True)
    r = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return tl.where(x != x, x, r.to(tl.float32, bitcast=True))


@triton.jit
def round_to_float8e4m3(v):
    """float32 v, already within +-448, rounded to the float8 e4m3fn grid (ties to even), in float32.

    The grid step at |v| in [2^e, 2^(e+1)) is 2^(e-3) (three mantissa bits), and 2^-9 for
    every |v| < 2^-6 (subnormals): |v| / step rounded half to even, times step, all exact in
    float32. The caller's cast to float8 is then exact; done here, not by the cast, because
    the interpreter's float32 -> float8 cast does not carry a rounding into the exponent."""
    bits = v.to(tl.int32, bitcast=True)
    mag = (bits & 0x7FFFFFFF).to(tl.float32, bitcast=True)                # |v|
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)                      # floor(log2|v|), >= -6
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)            # 2^(e-3)
    inv = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)             # 2^(3-e)
    r = round_half_even(mag * inv) * step
    # v's sign back on the bits: a negative value that rounds to 0 is -0, as the cast gives.
    return (r.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def requantize(v, zp, HAS_ZP: tl.constexpr, FLOAT8: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """v (float32, already divided by the scale) as the quantized type's value, in float32.

    Integers: round half to even, add the zero point, saturate to [QMIN, QMAX]. Float8: add
    the zero point (only when there is one: -0 + 0 would lose the sign of zero), clamp to
    +-448 and round to the e4m3 grid (NaN stays NaN: the comparisons are false), so the
    caller's cast to float8 is exact."""
    if FLOAT8:
        if HAS_ZP:
            v = v + zp
        v = round_to_float8e4m3(tl.where(v > 448.0, 448.0, tl.where(v < -448.0, -448.0, v)))
    else:
        v = round_half_even(v)
        if HAS_ZP:
            v = v + zp
        v = tl.minimum(tl.maximum(v, QMIN), QMAX)
    return v


@triton.jit
def _in_precision(x, PREC: tl.constexpr):
    """x rounded to the division's type (0 float32, 1 float16, 2 bfloat16), held in float32."""
    if PREC == 1:
        x = x.to(tl.float16).to(tl.float32)
    elif PREC == 2:
        x = round_to_bfloat16(x.to(tl.float32))
    else:
        x = x.to(tl.float32)
    return x


@triton.jit
def _quantize_kernel(X, Y, SCALE, ZP, n, HAS_ZP: tl.constexpr, PREC: tl.constexpr, FLOAT8: tl.constexpr,
                     QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)      # [BLOCK], storage order
    mask = offs < n
    x = _in_precision(tl.load(X + offs, mask=mask, other=0.0), PREC)
    s = _in_precision(tl.load(SCALE), PREC)
    v = _in_precision(tl.math.div_rn(x, s), PREC)                           # X / y_scale in its type
    zp = 0.0
    if HAS_ZP:
        zp = tl.load(ZP).to(tl.float32)
    y = requantize(v, zp, HAS_ZP, FLOAT8, QMIN, QMAX)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


def quantized_dtype(zero_point: Tensor | None, output_dtype: int) -> torch.dtype:
    """The torch dtype QuantizeLinear produces (output_dtype, else the zero point's, else uint8).

    By name: int4 is held in torch.int8 but saturates at +-8, which this kernel does not do."""
    qt = _quant_type(zero_point, output_dtype)
    assert qt.name in OUT_NAMES, f"QuantizeLinear.triton produces {sorted(OUT_NAMES)}, not {qt.name}"
    return qt.torch


def is_dense(t: Tensor) -> bool:
    """Whether `t`'s elements fill [data_ptr, data_ptr + numel) once each (any dim order)."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def _check(x: Tensor, y_scale: Tensor, y_zero_point: Tensor | None, out: torch.dtype, prec: torch.dtype,
           block_size: int, saturate: int) -> None:
    assert x.dtype in IN_DTYPES, f"QuantizeLinear.triton takes float16/bfloat16/float32 X, got {x.dtype}"
    assert y_scale.numel() == 1, f"QuantizeLinear.triton is per tensor; y_scale has shape {tuple(y_scale.shape)}"
    assert y_zero_point is None or y_zero_point.numel() == 1, \
        f"QuantizeLinear.triton is per tensor; y_zero_point has shape {tuple(y_zero_point.shape)}"
    assert block_size == 0, "QuantizeLinear.triton does not do blocked quantization (block_size must be 0)"
    assert out in OUT_TYPES, f"QuantizeLinear.triton produces int8, uint8 or float8_e4m3fn, not {out}"
    assert prec in PRECISIONS, f"QuantizeLinear.triton divides in float16/bfloat16/float32, not {prec}"
    assert saturate or OUT_TYPES[out] is not None, "QuantizeLinear.triton saturates float8 (saturate=1 only)"


def quantize_linear(x: Tensor, y_scale: Tensor, y_zero_point: Tensor | None = None, *, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, precision: int = 0, saturate: int = 1,
                    config: dict[str, Any] | None = None) -> Tensor:
    """Y = QuantizeLinear(X) with per-tensor parameters, in X's memory format (module docstring).

    `axis` only places per-axis parameters, which this kernel does not take."""
    out = quantized_dtype(y_zero_point, output_dtype)
    prec = _division_dtype(y_scale, precision)
    _check(x, y_scale, y_zero_point, out, prec, block_size, saturate)
    cfg = dict(CONFIGS[0] if config is None else config)
    if not is_dense(x):
        x = x.contiguous()
    y = torch.empty_like(x, dtype=out)  # preserve_format: a dense X's strides
    if any(sx != sy for d, sx, sy in zip(x.shape, x.stride(), y.stride()) if d != 1):
        # torch keeps a dense tensor's strides; should it not, fall back to row-major both.
        x = x.contiguous()
        y = torch.empty_like(x, dtype=out, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return y
    info = OUT_TYPES[out]
    qmin, qmax = info if info is not None else (0.0, 0.0)
    zp = y_scale if y_zero_point is None else y_zero_point   # a placeholder pointer when absent
    grid = (triton.cdiv(n, cfg["BLOCK"]),)
    _quantize_kernel[grid](x, y, y_scale, zp, n, HAS_ZP=y_zero_point is not None, PREC=PRECISIONS[prec],
                           FLOAT8=info is None, QMIN=qmin, QMAX=qmax, BLOCK=cfg["BLOCK"],
                           num_warps=cfg["num_warps"])
    return y

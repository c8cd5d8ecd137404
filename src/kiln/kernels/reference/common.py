"""Helpers shared by the reference op families: axes, padding arithmetic, dtypes.

Everything here works on Python ints and torch tensors alike and never moves a
tensor's data to the host except tiny index/shape tensors (`as_ints`).
"""
from __future__ import annotations

from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def norm_axis(axis: int, rank: int) -> int:
    """Map a possibly negative ONNX axis into [0, rank); rank 0 accepts axis 0 / -1."""
    r = max(rank, 1)
    if not -r <= axis < r:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + r if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [norm_axis(int(a), rank) for a in axes]


def as_ints(t: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    """Read a small shape/index tensor (e.g. Reshape's `shape`) as Python ints.

    This is the one place data crosses to the host: such inputs decide output shapes,
    so they must be known on the host anyway.
    """
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def as_scalar(t: torch.Tensor) -> int | float | bool:
    """Read a one-element tensor as a Python number (host transfer of one value)."""
    return t.reshape(-1)[0].item()


def is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which to accumulate a float reduction: fp16/bf16 widen to float32.

    Matches ONNX `stash_type=1` and keeps the oracle exact enough for half types.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def float_like(t: torch.Tensor) -> torch.Tensor:
    """`t` in a float dtype suitable for transcendental math (ints go to float64).

    float64 keeps every int32 exactly, so results cast back to the int type agree
    with numpy, which computes such ops in float64 too.
    """
    if t.dtype.is_floating_point:
        return t
    return t.to(torch.float64)


# ---------------------------------------------------------------- conv / pool padding


def spatial_attrs(rank: int, kernel_shape: Sequence[int], strides: Sequence[int] | None,
                  dilations: Sequence[int] | None) -> tuple[list[int], list[int], list[int]]:
    """Fill the ONNX defaults (all ones) for strides and dilations of `rank` spatial dims."""
    k = [int(v) for v in kernel_shape]
    s = [int(v) for v in strides] if strides else [1] * rank
    d = [int(v) for v in dilations] if dilations else [1] * rank
    if not len(k) == len(s) == len(d) == rank:
        raise ValueError(f"kernel_shape {k}, strides {s}, dilations {d} must all have {rank} entries")
    return k, s, d


def resolve_pads(auto_pad: str, in_shape: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int],
                 pads: Sequence[int] | None) -> list[int]:
    """The ONNX `pads` ([x1_begin, x2_begin, ..., x1_end, x2_end, ...]) implied by `auto_pad`.

    SAME_* make output = ceil(input / stride): the total padding needed is split in
    half and the odd element goes to the end (SAME_UPPER) or the beginning (SAME_LOWER).
    """
    n = len(in_shape)
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in pads] if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}; expected NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def pool_output_size(size: int, k: int, s: int, d: int, pad_begin: int, pad_end: int,
                     ceil_mode: int) -> int:
    """Number of windows along one axis, with PyTorch's/ONNX Runtime's ceil_mode rule.

    In ceil mode a last, partial window is kept only if it starts inside the input or
    its leading padding; windows that would start in the trailing padding are dropped.
    """
    span = size + pad_begin + pad_end - ((k - 1) * d + 1)
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pad_begin:
            out -= 1
    else:
        out = span // s + 1
    return max(out, 0)


def to_torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX pads (all begins, then all ends) -> F.pad order (last axis first, begin/end pairs)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [int(pads[i]), int(pads[i + n])]
    return out


# ---------------------------------------------------------------- unsigned integers
# torch's CPU kernels cover uint8 fully but only copies, views, comparisons for equality
# and bitwise and/or/xor for uint16/uint32/uint64. Other ops compute on a signed stand-in.

WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
_INT64_MIN = -(2 ** 63)


def is_wide_unsigned(t: torch.Tensor) -> bool:
    """Whether `t` is uint16/uint32/uint64, the unsigned types torch computes little with."""
    return t.dtype in WIDE_UNSIGNED


def unsigned_bits(t: torch.Tensor) -> torch.Tensor:
    """`t` as int64 holding the same value modulo 2**64 (uint64 keeps its bits).

    Addition, subtraction, multiplication and left shifts on the result, cast back with
    `from_unsigned_bits`, wrap exactly as the unsigned type does.
    """
    if t.dtype == torch.uint64:
        return t.view(torch.int64)
    return t.to(torch.int64)


def from_unsigned_bits(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `unsigned_bits`: int64 values to `dtype`, wrapping modulo 2**bits."""
    if dtype == torch.uint64:
        return t.contiguous().view(torch.uint64)
    return t.to(dtype)


def unsigned_ordered(t: torch.Tensor) -> torch.Tensor:
    """int64 whose signed order is the unsigned order of `t` (for max/min/compare/sort).

    uint16/uint32 widen exactly; uint64 flips its sign bit. Other dtypes pass through.
    """
    if t.dtype == torch.uint64:
        return torch.bitwise_xor(t.view(torch.int64), _INT64_MIN)
    if t.dtype in WIDE_UNSIGNED:
        return t.to(torch.int64)
    return t


def from_unsigned_ordered(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `unsigned_ordered` for a result of the same values (max, min, clip)."""
    if dtype == torch.uint64:
        return torch.bitwise_xor(t, _INT64_MIN).contiguous().view(torch.uint64)
    if dtype in WIDE_UNSIGNED:
        return t.to(dtype)
    return t


# ---------------------------------------------------------------- sub-byte and MX types
# kiln holds int4/int2 in int8, uint4/uint2 in uint8, float4_e2m1 and float8_e8m0 in
# float32; these put arbitrary values onto those types' grids.


def wrap_int_bits(t: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer `t` reduced modulo 2**bits into the signed or unsigned `bits`-wide range.

    Two's complement wraparound, as a hardware cast keeps the low bits (200 -> int4 = -8 + 8).
    """
    span = 1 << bits
    low = t.to(torch.int64) & (span - 1)
    if signed:
        low = low - ((low >> (bits - 1)) & 1) * span
    return low


def round_to_float4e2m1(x: torch.Tensor) -> torch.Tensor:
    """float32 values on the float4 e2m1 grid {0, 0.5, 1, 1.5, 2, 3, 4, 6} (signed).

    Rounds to nearest, ties to even; magnitudes past 6 and infinities saturate to 6.
    The type has no NaN: like ml_dtypes (the onnx reference), NaN becomes -0.
    """
    x = x.to(torch.float32)
    a = x.abs()
    # Grid spacing: 0.5 below 2, 1 in [2, 4), 2 from 4. round() halves to even, and an
    # even multiple of the spacing is exactly an even mantissa.
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    q = torch.clamp(torch.round(a / step) * step, max=6.0)
    q = torch.where(torch.isnan(a), torch.full_like(q, -0.0), torch.copysign(q, x))
    return q


def round_to_float8e8m0(x: torch.Tensor, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    """float32 values on the float8 e8m0 grid (powers of two 2**-127 .. 2**127, NaN).

    Follows the onnx reference bit for bit: the float32 exponent is kept (sign ignored,
    zero and subnormals give 2**-127), the mantissa rounds it "up", "down" or to
    "nearest"; NaN and infinities give NaN; without `saturate` rounding past 2**127 gives NaN.
    """
    if round_mode not in ("up", "down", "nearest"):
        raise ValueError(f"round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64)
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    if round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    elif round_mode == "nearest":
        guard = (bits & 0x400000) != 0
        rest = (bits & 0x3FFFFF) != 0
        up = guard & (rest | (exponent > 0))
    else:
        up = torch.zeros_like(special)
    up = up & ~special
    if saturate:
        up = up & (exponent != 0xFE)
    exponent = torch.where(special, 0xFF, exponent + up.to(torch.int64))
    # 2**(e - 127) as float32 bits: a normal number for e >= 1, the subnormal 2**-127 for e = 0.
    pattern = torch.where(exponent == 0, 1 << 22, exponent << 23).to(torch.int32)
    value = pattern.view(torch.float32)
    return torch.where(exponent == 0xFF, torch.full_like(value, float("nan")), value)


# float8 type -> (largest finite value, half an ulp at it, whether a tie at max + half ulp
# rounds up (the max's mantissa is odd), what overflow gives without saturation).
FLOAT8_LIMITS = {
    torch.float8_e4m3fn: (448.0, 16.0, False, float("nan")),
    torch.float8_e4m3fnuz: (240.0, 8.0, True, float("nan")),
    torch.float8_e5m2: (57344.0, 4096.0, True, float("inf")),
    torch.float8_e5m2fnuz: (57344.0, 4096.0, True, float("nan")),
}
FLOAT8_TYPES = tuple(FLOAT8_LIMITS)


def round_to_float8(v: torch.Tensor, dtype: torch.dtype, saturate: int) -> torch.Tensor:
    """float -> float8 with ONNX's rules: round to nearest even; out of range clamps to the
    largest finite value (saturate, infinities included) or overflows (inf for e5m2, NaN for
    the others). NaN stays NaN. Done here rather than by torch's cast, which saturates e4m3fn
    and turns every out-of-range value into NaN for the fnuz types."""
    top, half_ulp, tie_up, overflow = FLOAT8_LIMITS[dtype]
    if saturate:
        return v.clamp(-top, top).to(dtype)
    mag = v.abs()
    over = (mag >= top + half_ulp) if tie_up else (mag > top + half_ulp)
    if overflow == float("inf"):
        big = torch.copysign(torch.full_like(v, overflow), v)
    else:
        big = torch.full_like(v, overflow)
    return torch.where(over, big, v.clamp(-top, top)).to(dtype)

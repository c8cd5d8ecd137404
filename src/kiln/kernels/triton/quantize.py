"""QuantizeLinear (per tensor, or per channel of the last axis) in Triton, and the rounding helpers the quantized GEMM and conv epilogues share.

The oracle is QuantizeLinear (kernels/reference/quantize.py):

  Y = saturate(round_half_even(X / y_scale) + y_zero_point)      int8 / uint8
  Y = fp8(clamp(X / y_scale + y_zero_point, -448, 448))          float8_e4m3fn (saturate=1)

with the division done in the scale's type (or `precision`): X and y_scale are rounded to
it, divided, and the quotient rounded to it. The kernel divides in float32, correctly rounded
(divide: the quotient div_rn gives, from the scale's reciprocal made once on the host, with
two FMAs per element instead of an IEEE division's long sequence and slow-path call), and
rounds the quotient to float16/bfloat16 when that is the type: the float32 quotient of two
16-bit values rounded once more is the correctly rounded 16-bit quotient (24 >= 2 * 11 + 2
bits), which is what torch computes, so Y equals the reference bit for bit. Every rounding is
float32/bit arithmetic that is exact on the GPU and in the interpreter alike (which has no
libdevice rint, and whose bfloat16 and float8 casts do not round to nearest even): integers
by one float32 add of 1.5 * 2^23 read off the bits (requantize), bfloat16 on the bits, and
float8 by the GPU's own conversion where compiled (HW_FLOAT8: round to nearest even,
saturating) or, in the interpreter, straight to its bit pattern (float8e4m3_code); either
way stored through a uint8 view of Y. NaN in a float8 output is 0x7F or 0xFF (the sign of a
NaN is no part of the contract: the GPU's arithmetic drops it, x86's keeps it).

The same helpers round the requantizing epilogues of the quantized GEMM and convolution
(qgemm.py, qconv.py): requantize() returns the code to store (the integer, or the e4m3fn
bits), a few instructions per element and no division, so that an 8-bit output costs no
more than a float one.

Memory format: a non-overlapping, dense X (contiguous, channels_last, any permutation of
dims) is quantized in its storage order and Y gets X's strides, so a channels_last input
gives a channels_last output with no copy; other X are made contiguous first. The kernel
is one flat pass over numel elements (the parameters are per tensor, so order is free);
offsets are int64. Parameters per channel of the last axis (SmoothQuant's per-channel
activation scales, precision/smooth_quant.py) are read at offset % C of a row-major X.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.memo import all_zero, derived, derived_table
from kiln.kernels.reference.quantize import _division_dtype, _quant_type, per_last_axis
from kiln.kernels.triton.activation import activate, activation_code
from kiln.kernels.triton.compiled import COMPILED
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The division's type (the scale's, or `precision`): code for the kernel.
PRECISIONS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Quantized types: saturation range (integers) or None (float8 e4m3fn, saturating at 448).
OUT_TYPES: dict[torch.dtype, tuple[int, int] | None] = {
    torch.int8: (-128, 127), torch.uint8: (0, 255), torch.float8_e4m3fn: None,
}
OUT_NAMES = frozenset({"int8", "uint8", "float8_e4m3fn"})

# Compiled kernels round float32 to e4m3 with the GPU's own conversion (cvt.rn.satfinite on
# sm_89+, which every float8 kernel requires: nearest, ties to even, two values per
# instruction); the interpreter's cast does not round to nearest even, so there the bits come
# from float8e4m3_code (the GPU tests check that both give the reference's bits).
HW_FLOAT8: tl.constexpr = COMPILED
# Integer codes are packed four to a register (packed_bytes) in tiles of this many elements or more.
PACKED_TILE: tl.constexpr = tl.constexpr(128 * 256)

# The tuning space: elements per program and warps. A memory-bound pass: bigger blocks
# amortise the scale load, smaller ones fill the GPU on small tensors.
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK": 1024, "num_warps": 4},
    {"BLOCK": 2048, "num_warps": 4},
    {"BLOCK": 4096, "num_warps": 8},
)


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
def float8e4m3_code(v):
    """The float8 e4m3fn encoding (0..255, int32) of float32 v within +-448 or NaN, rounded to
    the nearest e4m3 value, ties to even; NaN gives 0x7F with v's sign bit.

    Normal range (|v| >= 2^-6): e4m3 keeps 3 of float32's 23 fraction bits. Adding 2^19 - 1 plus
    the lowest kept bit (bit 20) to the magnitude's bits rounds the fraction half to even,
    a carry moving into the exponent; then bits >> 20 is (exponent << 3 | fraction) with
    float32's exponent bias 127, and the e4m3 code is that minus (127 - 7) << 3 = 960 (the
    subtraction is folded into the add, on bits shifted by 20). Subnormals (|v| < 2^-6, the
    grid step 2^-9): |v| * 2^9 + 2^23 rounds |v| / 2^-9 to an integer m (the float32 step is 1
    there, exact on both backends) and the code is m (8 reaches 2^-6, the first normal code).
    Integer arithmetic on the bits, so the result is the same on the GPU and in the
    interpreter, whose float32 -> float8 casts neither carry a rounding into the exponent nor
    keep NaN (0x7C, the value 256); the caller stores the code into the output viewed as uint8."""
    bits = v.to(tl.int32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    normal = (mag + (0x7FFFF - (960 << 20)) + ((mag >> 20) & 1)) >> 20
    sub = (mag.to(tl.float32, bitcast=True) * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(mag < 0x3C800000, sub, normal)          # 0x3C800000: 2^-6
    code = tl.where(mag > 0x7F800000, 0x7F, code)           # NaN
    return code | ((bits >> 24) & 0x80)


@triton.jit
def small_int_to_float(x):
    """Integers below 2^22 in magnitude as float32, exactly: the bits of x + 1.5 * 2^23 read as a
    float32 (the sum lies in [2^23, 2^24), where float32's step is 1) minus 1.5 * 2^23. An integer
    add and a float subtraction at full ALU rate, where the I2F conversion runs at a fraction of
    it (and Triton's int8 -> float32 conversion of a large tile spills registers on sm_90)."""
    return (x.to(tl.int32) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def requantize(v, zp, HAS_ZP: tl.constexpr, FLOAT8: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """v (float32, already divided by the scale) as the code the quantized output stores: int8 or
    uint8 for an integer output, the e4m3 bits (uint8; int32 interpreted) for float8.

    Integers: saturate(round_half_even(v) + zp) to [QMIN, QMAX], computed as v rounded by one
    float32 add of 1.5 * 2^23 (in [2^23, 2^24) float32's step is 1, so the add rounds half to
    even, IEEE's default on the GPU and in numpy alike), clamped to [QMIN - zp, QMAX - zp]
    shifted by the same 1.5 * 2^23 (the same result: rounding is monotonic and the bounds are
    integers), and read off the bits: their low byte, plus the zero point, is the code (that of
    1.5 * 2^23, 0x4B400000, is zero): four instructions per element, the add fused with the
    GEMM and conv epilogues' multiply by 1 / out_scale into one FMA, no branch, no division.
    The codes come back as int8/uint8 (packed_bytes). NaN saturates (to QMIN on the GPU, whose
    min/max drop a NaN; the interpreter's keep it: an integer output has no NaN and the
    reference's is undefined).
    Float8: add the zero point (only when there is one: -0 + 0 would lose the sign of zero),
    clamp to +-448 keeping NaN, and encode: the GPU's saturating conversion where compiled
    (HW_FLOAT8, uint8 bits; it clamps, infinities included), float8e4m3_code after an explicit
    clamp in the interpreter (int32). The caller stores
    code.to(Y's element type), a float8 Y viewed as uint8."""
    if FLOAT8:
        if HAS_ZP:
            v = v + zp.to(tl.float32)
        if HW_FLOAT8:   # cvt.rn.satfinite: the clamp to +-448 (infinities too) is the conversion's own
            q = v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:
            v = tl.maximum(v, -448.0, propagate_nan=tl.PropagateNan.ALL)
            q = float8e4m3_code(tl.minimum(v, 448.0, propagate_nan=tl.PropagateNan.ALL))
    else:
        z = 0
        if HAS_ZP:
            z = zp.to(tl.int32)
        q = packed_bytes(_saturate_round(v, (QMIN - z) * 1.0, (QMAX - z) * 1.0, z), QMIN)
    return q


@triton.jit
def requantize_relu(v, inv, zp, HAS_ZP: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """requantize(relu(v) * inv) for an integer output, the Relu folded into the saturation:
    relu(v) * inv is v * inv held at 0 on the side the sign of inv keeps (from below for inv > 0,
    from above for inv < 0), and 0 lies within [QMIN - zp, QMAX - zp] (zp is a code of the type),
    so moving that bound to 0 gives the same codes with one max instruction per element less."""
    z = 0
    if HAS_ZP:
        z = zp.to(tl.int32)
    lo = (QMIN - z) * 1.0
    hi = (QMAX - z) * 1.0
    positive = inv > 0
    return packed_bytes(_saturate_round(v * inv, tl.where(positive, tl.maximum(lo, 0.0), lo),
                                        tl.where(positive, hi, tl.minimum(hi, 0.0)), z), QMIN)


@triton.jit
def packed_bytes(code, QMIN: tl.constexpr):
    """Integer codes (int32, within the 8-bit type's range) as int8 (QMIN < 0) or uint8; in tiles
    of PACKED_TILE elements or more, four to a register where compiled: two byte permutes join
    each pair's low bytes and a third the two pairs (prmt, exact: the codes are saturated).
    Triton keeps each code in a register of its own until the store, as many live registers as
    the tile's accumulators: int8 128x256 tiles over 8 warps spilled (72-496 bytes of stack a
    thread, sm_90), where float8's codes leave the GPU's conversion four to a register; packed,
    they spill 0-120 bytes. Smaller tiles do not spill, and there the permutes cost ~8% more
    instructions than the store's own packing (benchmarks/kernel_resources.py). Elsewhere, and
    in the interpreter, the plain cast."""
    if COMPILED and code.numel >= PACKED_TILE:
        code = tl.inline_asm_elementwise(
            "{ .reg .b32 lo, hi; prmt.b32 lo, $1, $2, 0x0040; prmt.b32 hi, $3, $4, 0x0040; "
            "prmt.b32 $0, lo, hi, 0x5410; }",
            "=r,r,r,r,r", [code], dtype=tl.int8 if QMIN < 0 else tl.uint8, is_pure=True, pack=4)
    else:
        code = code.to(tl.int8 if QMIN < 0 else tl.uint8)
    return code


@triton.jit
def shifted_round(v, lo, hi):
    """v rounded half to even by one float32 add of 1.5 * 2^23 and clamped to [lo, hi] (integers)
    in that shifted domain (the same values: the shift is exact there and monotonic everywhere),
    returned shifted: less 12582912.0 it is the rounded value, and its bits less 0x4B400000 the
    integer. The add comes first so that the GPU fuses it with the caller's multiply by
    1 / scale into one FMA, which rounds the exact product once, as the reference does
    (interpreted: twice)."""
    return tl.minimum(tl.maximum(v + 12582912.0, lo + 12582912.0), hi + 12582912.0)


@triton.jit
def _saturate_round(v, lo, hi, z):
    """shifted_round's value read off the bits, plus z (requantize's docstring). Only the low byte
    is the code: the caller stores it into an 8-bit Y (0x4B400000 has a zero low byte, so its
    subtraction is left out)."""
    return shifted_round(v, lo, hi).to(tl.int32, bitcast=True) + z


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


# scale tensor -> {division dtype: 1 / scale in float32} (kernels/memo.py)
_RECIPROCALS = derived_table()


def reciprocal_of(scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """1 / scale as float32, correctly rounded, the scale first rounded to `dtype` (the
    division's type), memoised per scale tensor and dtype (torch's float32 division is IEEE on
    CPU and CUDA). Made without reading the scale on the host, so a CUDA graph may capture it."""
    return derived(_RECIPROCALS, scale, dtype, lambda t: torch.reciprocal(t.to(dtype).to(torch.float32)))


@triton.jit
def divide(x, s, inv):
    """x / s in float32, correctly rounded (div_rn's result), given inv = 1 / s correctly
    rounded: q = x * inv is within an ulp of the quotient, r = x - s * q is exact in one FMA,
    and q + r * inv rounded once is the correctly rounded quotient (Markstein's theorem). Where
    it does not apply the cases are taken apart: x = +-0 gives x * s (the sign of x / s); an
    infinite or NaN q (x infinite or NaN, or s so small that inv overflowed) stays q, which a
    quantized output saturates as it would the true quotient (so may a quotient within an ulp
    of float32's largest value, which can come out infinite). A quotient below float32's normal
    range, or a numerator below 2**-100 (its residual r falls below the normal range and is no
    longer exact), may be an ulp off: far below anything a quantized output resolves."""
    q = x * inv
    r = tl.fma(-q, s, x)
    exact = tl.fma(r, inv, q)
    return tl.where(x == 0, x * s, tl.where(tl.abs(q) < float("inf"), exact, q))


@triton.jit
def _quantize_kernel(X, Y, SCALE, INV, ZP, n, C, p0, p1, HAS_ZP: tl.constexpr, PREC: tl.constexpr,
                     FLOAT8: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, PER_CHANNEL: tl.constexpr,
                     ACT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)      # [BLOCK], storage order
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0)
    if ACT != 0:  # act(X) in float32, rounded to X's type: the Y the quantized FusedMatMul would have stored
        x = activate(x.to(tl.float32), ACT, p0, p1).to(X.dtype.element_ty)
    x = _in_precision(x, PREC)
    if PER_CHANNEL:  # X row-major, the parameters along its last axis of C (always in range)
        ch = offs % C
        s = _in_precision(tl.load(SCALE + ch), PREC)
        inv = tl.load(INV + ch)
    else:
        s = _in_precision(tl.load(SCALE), PREC)
        inv = tl.load(INV)
    v = _in_precision(divide(x, s, inv), PREC)                               # X / y_scale in its type
    zp = 0
    if HAS_ZP:
        if PER_CHANNEL:
            zp = tl.load(ZP + ch)
        else:
            zp = tl.load(ZP)
    code = requantize(v, zp, HAS_ZP, FLOAT8, QMIN, QMAX)
    tl.store(Y + offs, code.to(Y.dtype.element_ty), mask=mask)              # Y: int8/uint8, float8 as uint8


def needed_zero_point(zero_point: Tensor | None) -> Tensor | None:
    """The zero point a kernel must apply: None for an absent one and for an all-zero integer one
    (saturate(round(v) + 0) is saturate(round(v)), so the kernel drops the per-element zero-point
    arithmetic and the registers that hold it; kiln's own quantizers write such zero points). A
    float8 zero point stays: v + 0 turns -0 into +0, as the reference does. Call it after the
    output type is known (a zero point also names the type)."""
    if zero_point is None or zero_point.dtype not in (torch.int8, torch.uint8) or not all_zero(zero_point):
        return zero_point
    return None


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
           block_size: int, saturate: int, axis: int) -> None:
    assert x.dtype in IN_DTYPES, f"QuantizeLinear.triton takes float16/bfloat16/float32 X, got {x.dtype}"
    per_channel = per_last_axis(tuple(x.shape), tuple(y_scale.shape), axis)
    assert y_scale.numel() == 1 or per_channel, \
        f"QuantizeLinear.triton is per tensor or per channel of the last axis; y_scale has shape {tuple(y_scale.shape)}"
    assert y_zero_point is None or y_zero_point.numel() == y_scale.numel(), \
        f"y_zero_point has shape {tuple(y_zero_point.shape)}, y_scale {tuple(y_scale.shape)}"
    assert block_size == 0, "QuantizeLinear.triton does not do blocked quantization (block_size must be 0)"
    assert out in OUT_TYPES, f"QuantizeLinear.triton produces int8, uint8 or float8_e4m3fn, not {out}"
    assert prec in PRECISIONS, f"QuantizeLinear.triton divides in float16/bfloat16/float32, not {prec}"
    assert saturate or OUT_TYPES[out] is not None, "QuantizeLinear.triton saturates float8 (saturate=1 only)"


def quantize_linear(x: Tensor, y_scale: Tensor, y_zero_point: Tensor | None = None, *, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, precision: int = 0, saturate: int = 1,
                    config: dict[str, Any] | None = None, activation: str = "",
                    activation_params: Sequence[float] = ()) -> Tensor:
    """Y = QuantizeLinear(X) with per-tensor parameters, in X's memory format (module docstring), or
    with parameters per channel of X's last axis (`axis` the last; X then row-major). With an
    `activation` (activation.ACTIVATIONS): QuantizeLinear(act(X)), act in float32 and rounded to
    X's type, in the same pass (kiln::MatMulQuantize's cuBLAS-GEMM-then-activate-and-quantize tactic)."""
    out = quantized_dtype(y_zero_point, output_dtype)
    prec = _division_dtype(y_scale, precision)
    _check(x, y_scale, y_zero_point, out, prec, block_size, saturate, axis)
    y_zero_point = needed_zero_point(y_zero_point)
    cfg = dict(CONFIGS[0] if config is None else config)
    per_channel = y_scale.numel() > 1
    if not is_dense(x) or (per_channel and not x.is_contiguous()):  # per channel: row-major, channel = offset % C
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
    qmin, qmax = info if info is not None else (0, 0)
    zp = y_scale if y_zero_point is None else y_zero_point   # a placeholder pointer when absent
    grid = (triton.cdiv(n, cfg["BLOCK"]),)
    y_codes = y.view(torch.uint8) if info is None else y     # float8: the kernel stores its bits
    inv = reciprocal_of(y_scale, prec).reshape(-1)
    act, p0, p1 = activation_code(activation, activation_params)
    _quantize_kernel[grid](x, y_codes, y_scale.reshape(-1), inv, zp.reshape(-1), n, x.shape[-1] if per_channel else 1,
                           p0, p1, HAS_ZP=y_zero_point is not None, PREC=PRECISIONS[prec], FLOAT8=info is None,
                           QMIN=qmin, QMAX=qmax, PER_CHANNEL=per_channel, ACT=act, BLOCK=cfg["BLOCK"],
                           num_warps=cfg["num_warps"], **launch_options(x))
    return y


@dataclass(frozen=True, slots=True)
class QuantOut:
    """The QuantizeLinear a float kernel (a norm, a GEMM) applies to its output Y as it stores it."""
    codes: Tensor | None        # Yq (Y's shape); float8 viewed as uint8: the kernel stores bits
    scale: Tensor | None        # one element, or one per column of Y's last axis (per_column)
    inverse: Tensor | None      # 1 / scale in float32, correctly rounded (reciprocal_of)
    zero_point: Tensor | None   # the scale's size, or None (needed_zero_point)
    precision: int              # PRECISIONS code of the division's type
    fp8: bool
    qmin: int
    qmax: int
    per_column: bool = False


NO_QUANT = QuantOut(None, None, None, None, 0, False, 0, 0)


def quant_out(yq: Tensor, y_scale: Tensor, y_zero_point: Tensor | None, prec: torch.dtype) -> QuantOut:
    """The store-side QuantizeLinear into `yq` (allocated in the quantized type) with QuantizeLinear's
    parameters, the division in `prec`; per column when y_scale has more than one element."""
    assert prec in PRECISIONS, f"a fused QuantizeLinear divides in float16/bfloat16/float32, not {prec}"
    info = OUT_TYPES[yq.dtype]
    qmin, qmax = info if info is not None else (0, 0)
    zp = needed_zero_point(y_zero_point)
    return QuantOut(yq.view(torch.uint8) if info is None else yq, y_scale.reshape(-1).contiguous(),
                    reciprocal_of(y_scale, prec).reshape(-1), None if zp is None else zp.reshape(-1).contiguous(),
                    PRECISIONS[prec], info is None, qmin, qmax, y_scale.numel() > 1)

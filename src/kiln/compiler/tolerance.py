"""Does a candidate tactic's output agree with the reference tactic's on the same inputs?

The metric, per output tensor, with `r` the reference and `c` the candidate:

    |c - r| <= atol * max|r| + rtol * |r|      (element-wise, over finite elements)

The absolute term is scaled by the tensor's largest magnitude: kernels that sum in a
different order (split-K GEMMs, tree reductions) differ by rounding errors proportional
to the size of the terms summed, not to the result, so an element that cancels to ~0
carries an error the size of its neighbours. Scaling keeps the check independent of the
inputs' scale. Infinities must sit at the same places with the same sign; where the
reference is NaN any value is accepted (the model is undefined there on these inputs, e.g.
an attention row whose every key is masked by the tuner's synthetic all-zero mask), but a
candidate NaN where the reference is finite is an error. Integer and boolean outputs must
be equal; float8 outputs too (value for value, -0 equal to +0, NaN where the reference is
NaN being don't-care as above); dtypes and shapes always must.

One step for quantized layers. kiln::QMatMul and kiln::QConv (QUANTIZED_OPS) round a
float epilogue once to an 8-bit type. Their reference computes that epilogue in float64;
a GPU kernel computes it in float32 (scales multiplied, bias and residual added, the
activation, the multiplication by 1 / out_scale), which moves the value by a few float32
ulps. Where the exact value lies within those ulps of a rounding boundary (a .5 tie for
integers, a midpoint between neighbours for float8) the two round to neighbouring values.
So for these ops only, integer outputs may differ from the reference's by ONE STEP
(adjacent representable values: 1 apart) in at most ceil(numel * STEP_FRACTION) elements.
Why this is sound: with an exact integer accumulator the float32 epilogue's relative error
is below ~1e-6, so for |v / out_scale| <= 255 a value moves by < 3e-4 of a step and lands
that close to a boundary with probability < 6e-4 on spread inputs (typically ~1e-5); a
wrong kernel (a wrong scale or zero point, rounding half away from zero on a grid of ties,
a transposed operand) differs by more than one step, or by one step in a large share of
elements, and is rejected. kiln::NormQuantize quantizes its LayerNorm output Y as stored:
a kernel that sums a row in another order moves Y by one ulp of its type in a few elements,
and only those near a tie (at most 6% of them for fp16 Y and |Y / s| <= 127) change Yq.
A kiln::QConv with mid quantization (mid_scale: an explicitly quantized residual block, the conv's
value rounded to its own codes before the shortcut joins) rounds twice: where the first rounding
lands on the neighbouring mid code (the same near-tie odds), the output moves by mid_scale, that
is mid_scale / out_scale output steps, plus its own rounding's one: such a layer's integer
outputs may differ by 1 + ceil(mid_scale / out_scale) steps, in the same few elements
(quantized_steps; the tuner passes it as `steps`). So may a kiln::QMatMul's with mid quantization
(ONNX Runtime's MatMul -> Q -> DQ -> Add(bias): the product rounded to its codes before the bias).
Where such a layer writes a float value, the same elements may differ by one mid_scale beyond the
float tolerance (mid_step; the tuner passes it as `mid`). A kiln::QMatMul with a code table
(precision/fuse_code_table.py) looks its codes up after rounding them: a code that moved by k
steps moves its entry by at most k times the table's largest jump between neighbouring codes.
Float8 outputs of these ops (FLOAT8_QUANTIZED): float8 operands are summed by the tensor
cores in a narrower accumulator than float32 (Hopper keeps ~14 bits per partial sum), so the
value before rounding carries an error proportional to the terms summed, as in any float16
GEMM, and no fraction of one-step differences follows from the epilogue alone. And float8's
grid is fine near zero (subnormal steps of 2^-9 against 32 at the top), so an error that
is tiny next to the tensor's largest value can be many steps for an element near zero.
An element passes when it is at most one step from the reference's value (the rounding of
a value near a boundary), or when its error is within the float16 tolerance, |c - r| <=
atol * max|r| + rtol * |r| (the accumulation error, judged as for a float16 output). A
wrong scale, a lost bias or a transposed operand is many steps and far outside that.
Float outputs of these ops compare with the float tolerances above. The op is the tactic's
op (Tactic.op), which the tuner passes; without one every output compares as above.
kiln::Attention with a requantized output (FLOAT_ERROR_QUANTIZED_OPS) rounds a value whose own
error is a float16 kernel's (P is rounded to 16 bits for the second product, the softmax sums
in another order), so near a rounding boundary a few percent of elements land one step over,
integer outputs as much as float8 ones: for it every 8-bit output is judged per element as
float8 outputs are above (one step, or within the float16 tolerance, in the output's units).
So is kiln::MatMulQuantize (a float16/bfloat16 GEMM's Y, summed in the kernel's own order and
rounded to 16 bits, then quantized): its Y differs from the reference's by the GEMM's rounding;
and kiln::QDQAttention (ONNX Runtime's attention with Q/DQ inside: its two products and its
softmax sum in the kernel's own order, so a score or probability near a rounding boundary lands
on the neighbouring code now and then, which moves the output by about one step).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from kiln.kernels.reference.common import FLOAT8_TYPES as FLOAT8
from kiln.kernels.reference.quantized import QCONV_INPUTS, QMATMUL_INPUTS

# (rtol, atol) by output dtype; types not named here (integers, bool, float8) compare exactly.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-4, 1e-5),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2),
}


# A tf32 engine computes float32 matmuls and convolutions on TF32 tensor cores, its reference
# tactics too: their inputs keep float16's 10-bit significand, so its float32 outputs are held to
# the float16 tolerance (an IEEE-fp32 kernel and a TF32 one differ by ~1e-4 relative, over fp32's).
TF32_TOLERANCE = TOLERANCES[torch.float16]

# Ops whose 8-bit outputs are a float epilogue rounded once; their kernels may round one
# element in STEP_FRACTION to the neighbouring value (module docstring).
QUANTIZED_OPS = frozenset({"kiln::QMatMul", "kiln::QConv", "kiln::NormQuantize"})
# Ops whose 8-bit output rounds a float16 kernel's result: one step or the float16 tolerance per element.
FLOAT_ERROR_QUANTIZED_OPS = frozenset({"kiln::Attention", "kiln::MatMulQuantize", "kiln::QDQAttention"})
STEP_FRACTION = 1e-3
FLOAT8_QUANTIZED = TOLERANCES[torch.float16]  # (rtol, atol) beside the one-step rule (module docstring)


def quantized_steps(op: str, args: Sequence[Any]) -> int:
    """The grid steps a quantized op's integer output may move by (in few elements): 1, or for a
    kiln::QConv / kiln::QMatMul with mid quantization 1 + ceil(mid_scale / out_scale); times a code
    table's largest jump (module docstring)."""
    mid, out = _mid_and_out(op, args)
    steps = 1 if mid is None or out is None else 1 + math.ceil(float((mid / out.abs()).max()))
    # (mid: per column, merged projections, or per tensor, either one: the largest column's ratio)
    table, zp = (QMATMUL_INPUTS.index(n) for n in ("table", "out_zp"))
    if op == "kiln::QMatMul" and len(args) > table and args[table] is not None:
        codes = args[zp].dtype if args[zp] is not None else None
        return steps * _largest_jump(args[table].detach().to("cpu", torch.int64).reshape(-1), codes)
    return steps


def _largest_jump(table: Any, codes: torch.dtype | None) -> int:
    """The largest difference between the entries of neighbouring codes (at least 1), in the codes'
    order: int8's (-128..127: bits 128..255, 0..127) or uint8's (0..255); the smaller of the two
    where the type is not known (no zero point: the stricter allowance)."""
    jumps = {t: max(1, int((o[1:] - o[:-1]).abs().max()))
             for t, o in ((torch.uint8, table), (torch.int8, torch.cat([table[128:], table[:128]])))}
    return jumps[codes] if codes in jumps else min(jumps.values())


def mid_step(op: str, args: Sequence[Any]) -> float:
    """mid_scale of a kiln::QConv / kiln::QMatMul with mid quantization and a float output (the
    value its mid rounding may move a few elements by, module docstring); 0.0 otherwise."""
    mid, out = _mid_and_out(op, args)
    return 0.0 if mid is None or out is not None else float(mid.abs().max())


def _mid_and_out(op: str, args: Sequence[Any]) -> tuple[Any, Any]:
    """(mid_scale, out_scale) among a kiln::QConv's / kiln::QMatMul's inputs, flat float64 on the
    host (one value, or one per column; None where absent)."""
    names = {"kiln::QConv": QCONV_INPUTS, "kiln::QMatMul": QMATMUL_INPUTS}.get(op)
    if names is None:
        return None, None
    found = (args[i] if len(args) > i else None for i in (names.index(n) for n in ("mid_scale", "out_scale")))
    return tuple(None if t is None else t.detach().to("cpu", torch.float64).reshape(-1) for t in found)


def mismatch(candidate: Any, reference: Any, op: str = "", tf32: bool = False, steps: int = 1,
             mid: float = 0.0) -> str | None:
    """None when `candidate` agrees with `reference`; otherwise what differs (for the log).

    `op` (e.g. "kiln::QMatMul") selects the one-step rule for quantized layers (`steps` steps:
    quantized_steps); `tf32` (a tf32 engine's layer) holds float32 outputs to TF32_TOLERANCE;
    `mid` (mid_step) lets a float output differ by up to that much more in STEP_FRACTION of its
    elements."""
    if isinstance(reference, (tuple, list)):
        if not isinstance(candidate, (tuple, list)) or len(candidate) != len(reference):
            return f"returned {_kind(candidate)} where the reference returns {_kind(reference)}"
        for i, (c, r) in enumerate(zip(candidate, reference)):
            why = mismatch(c, r, op, tf32, steps, mid)
            if why is not None:
                return f"output {i}: {why}"
        return None
    if isinstance(reference, torch.Tensor):
        if not isinstance(candidate, torch.Tensor):
            return f"returned {_kind(candidate)} where the reference returns a tensor"
        return _tensor_mismatch(candidate, reference, op in QUANTIZED_OPS or op in FLOAT_ERROR_QUANTIZED_OPS,
                                op in FLOAT_ERROR_QUANTIZED_OPS, tf32, steps, mid)
    return None if candidate == reference else f"returned {candidate!r}, the reference {reference!r}"


def _tensor_mismatch(c: torch.Tensor, r: torch.Tensor, one_step: bool, per_element: bool = False,
                     tf32: bool = False, max_steps: int = 1, mid: float = 0.0) -> str | None:
    if c.dtype != r.dtype or tuple(c.shape) != tuple(r.shape):
        return f"{c.dtype}{list(c.shape)} where the reference gives {r.dtype}{list(r.shape)}"
    if r.numel() == 0:
        return None
    c = c.to(r.device)
    if r.dtype in FLOAT8:
        return _steps_mismatch(c, r, one_step)
    if r.dtype not in TOLERANCES:
        if one_step and not r.dtype.is_floating_point and r.dtype != torch.bool and not r.dtype.is_complex:
            return _steps_mismatch(c, r, one_step, per_element, max_steps)
        return None if torch.equal(c, r) else "differs from the reference (exact type)"
    rtol, atol = TF32_TOLERANCE if tf32 and r.dtype == torch.float32 else TOLERANCES[r.dtype]
    wide = torch.float64 if r.dtype == torch.float64 else torch.float32
    c32, r32 = c.to(wide), r.to(wide)
    finite = torch.isfinite(r32)
    if not _same_specials(c32, r32, finite):
        return "non-finite values (NaN/inf) differ from the reference's"
    ref = torch.where(finite, r32, torch.zeros_like(r32))
    got = torch.where(finite, c32, torch.zeros_like(c32))
    scale = float(ref.abs().max())
    err = (got - ref).abs()
    excess = err - (atol * scale + rtol * ref.abs())
    worst = float(excess.max())
    if worst <= 0:
        return None
    over = excess > 0
    if mid > 0 and worst <= mid * 1.001 and int(over.sum()) <= max(1, int(STEP_FRACTION * r.numel())):
        return None   # the mid rounding's near-tie steps (module docstring)
    return (f"max error {float(err.max()):.3g} exceeds the tolerance (rtol {rtol:g}, atol {atol:g} x max|ref| "
            f"{scale:.3g})")


def _same_specials(c: torch.Tensor, r: torch.Tensor, finite: torch.Tensor) -> bool:
    """Finite where the reference is finite; the same infinity where it has one (NaN: any)."""
    return bool(torch.where(finite, torch.isfinite(c), (c == r) | torch.isnan(r)).all())


def _ordinal(t: torch.Tensor) -> torch.Tensor:
    """Each value's position on its type's grid as int64: neighbours differ by 1.

    Integers are their own position. float8 is sign-magnitude, so the 7 magnitude bits
    count the grid from zero (-0 and +0 both 0) and the sign bit mirrors them."""
    if t.dtype not in FLOAT8:
        return t.to(torch.int64)
    bits = t.view(torch.uint8).to(torch.int64)
    mag = bits & 0x7F
    return torch.where(bits >= 0x80, -mag, mag)


def _steps_mismatch(c: torch.Tensor, r: torch.Tensor, one_step: bool, per_element: bool = False,
                    max_steps: int = 1) -> str | None:
    """Exact agreement, or (one_step) at most one grid step (integers: max_steps) in a few elements
    (module docstring)."""
    valid = torch.ones_like(r, dtype=torch.bool)
    if r.dtype in FLOAT8:
        c32, r32 = c.to(torch.float32), r.to(torch.float32)
        finite = torch.isfinite(r32)
        if not _same_specials(c32, r32, finite):
            return "non-finite values (NaN/inf) differ from the reference's"
        valid = finite
    steps = torch.where(valid, (_ordinal(c) - _ordinal(r)).abs(), torch.zeros((), dtype=torch.int64))
    worst, differ = int(steps.max()), int((steps > 0).sum())
    if worst == 0:
        return None
    if not one_step:
        return f"differs from the reference (exact type) in {differ} of {r.numel()} elements"
    if r.dtype in FLOAT8:
        return _float8_mismatch(c32, r32, valid, steps, r.dtype)
    if per_element:
        return _float8_mismatch(c.to(torch.float32), r.to(torch.float32), valid, steps, r.dtype)
    allowed = math.ceil(r.numel() * STEP_FRACTION)
    if worst > max_steps:
        return (f"differs from the reference by up to {worst} steps of {r.dtype} (a quantized op may differ by "
                f"{max_steps})")
    if differ > allowed:
        return (f"differs from the reference by up to {worst} step(s) of {r.dtype} in {differ} of {r.numel()} "
                f"elements, more than the {allowed} a quantized op's float32 epilogue explains")
    return None


def _float8_mismatch(c: torch.Tensor, r: torch.Tensor, finite: torch.Tensor, steps: torch.Tensor,
                     dtype: torch.dtype) -> str | None:
    """A quantized op's float8 output (or a FLOAT_ERROR_QUANTIZED_OPS op's integer one): each element
    one step off at most, or within the float16 tolerance (module docstring)."""
    rtol, atol = FLOAT8_QUANTIZED
    ref = torch.where(finite, r, torch.zeros_like(r))
    err = torch.where(finite, (c - r).abs(), torch.zeros_like(r))
    scale = float(ref.abs().max())
    bad = (steps > 1) & (err > atol * scale + rtol * ref.abs())
    if not bool(bad.any()):
        return None
    return (f"differs from the reference by up to {int(steps[bad].max())} steps of {dtype} in {int(bad.sum())} "
            f"elements, beyond one step and the float16 tolerance (max error {float(err[bad].max()):.3g}, atol "
            f"{atol:g} x max|ref| {scale:.3g})")


def _kind(x: Any) -> str:
    if isinstance(x, (tuple, list)):
        return f"{len(x)} values"
    return type(x).__name__

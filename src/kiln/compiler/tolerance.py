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
be equal; dtypes and shapes always must.
"""
from __future__ import annotations

from typing import Any

import torch

# (rtol, atol) by output dtype; types not named here (integers, bool) compare exactly.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-4, 1e-5),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2),
}


def mismatch(candidate: Any, reference: Any) -> str | None:
    """None when `candidate` agrees with `reference`; otherwise what differs (for the log)."""
    if isinstance(reference, (tuple, list)):
        if not isinstance(candidate, (tuple, list)) or len(candidate) != len(reference):
            return f"returned {_kind(candidate)} where the reference returns {_kind(reference)}"
        for i, (c, r) in enumerate(zip(candidate, reference)):
            why = mismatch(c, r)
            if why is not None:
                return f"output {i}: {why}"
        return None
    if isinstance(reference, torch.Tensor):
        if not isinstance(candidate, torch.Tensor):
            return f"returned {_kind(candidate)} where the reference returns a tensor"
        return _tensor_mismatch(candidate, reference)
    return None if candidate == reference else f"returned {candidate!r}, the reference {reference!r}"


def _tensor_mismatch(c: torch.Tensor, r: torch.Tensor) -> str | None:
    if c.dtype != r.dtype or tuple(c.shape) != tuple(r.shape):
        return f"{c.dtype}{list(c.shape)} where the reference gives {r.dtype}{list(r.shape)}"
    if r.numel() == 0:
        return None
    if r.dtype not in TOLERANCES:
        return None if torch.equal(c.to(r.device), r) else "differs from the reference (exact type)"
    rtol, atol = TOLERANCES[r.dtype]
    wide = torch.float64 if r.dtype == torch.float64 else torch.float32
    c32, r32 = c.to(r.device, wide), r.to(wide)
    finite = torch.isfinite(r32)
    same_special = torch.where(finite, torch.isfinite(c32), (c32 == r32) | torch.isnan(r32))
    if not bool(same_special.all()):
        return "non-finite values (NaN/inf) differ from the reference's"
    ref = torch.where(finite, r32, torch.zeros_like(r32))
    got = torch.where(finite, c32, torch.zeros_like(c32))
    scale = float(ref.abs().max())
    err = (got - ref).abs()
    excess = err - (atol * scale + rtol * ref.abs())
    worst = float(excess.max())
    if worst <= 0:
        return None
    return (f"max error {float(err.max()):.3g} exceeds the tolerance (rtol {rtol:g}, atol {atol:g} x max|ref| "
            f"{scale:.3g})")


def _kind(x: Any) -> str:
    if isinstance(x, (tuple, list)):
        return f"{len(x)} values"
    return type(x).__name__

"""Per-output error metrics of an engine's output `a` against a reference `r`.

Pass/fail follows numpy.allclose, element-wise:

    |a - r| <= atol + rtol * |r|

with NaN equal to NaN and an infinity equal only to the same infinity. The other numbers
describe the error and never decide the verdict:

- abs/rel error over the elements finite in both (rel = |a - r| / (|r| + EPS)); elements
  whose NaN/inf pattern differs are counted in `nonfinite_mismatches` instead;
- `tolerance_ratio`: max of |a - r| / (atol + rtol * |r|), inf where the NaN/inf pattern
  differs; the output passes exactly when it is <= 1, so it ranks the worst tensors;
- cosine similarity of the flattened tensors and, for rank >= 2, the minimum over rows
  (rows: the last axis), over the elements finite in both (NaN when there are none);
- top-k agreement (when asked): the fraction of rows whose top-k index set is the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

EPS = 1e-12  # keeps the relative error finite where the reference is exactly 0

# (atol, rtol) by the engine's compute precision.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-5, 1e-4),
    "tf32": (1e-3, 1e-3),   # 10 mantissa bits in the matmul/conv inputs
    "fp16": (1e-2, 1e-2),
    "bf16": (1e-2, 1e-2),
}


def default_tolerances(precision: str) -> tuple[float, float]:
    """(atol, rtol) for an engine of this precision; fp32's for precisions not listed."""
    return TOLERANCES.get(precision, TOLERANCES["fp32"])


@dataclass(frozen=True, slots=True)
class OutputMetrics:
    """How one output of the engine differs from the reference's."""
    name: str
    shape: tuple[int, ...]
    reference_shape: tuple[int, ...]
    dtype: str
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    cosine: float
    min_row_cosine: float | None  # rank >= 2 only
    top_k: int | None
    top_k_agreement: float | None  # fraction of rows, when top_k was asked and applies
    mismatches: int  # elements outside the tolerance (NaN/inf mismatches included)
    nonfinite_mismatches: int
    size: int
    tolerance_ratio: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: NaN (undefined, e.g. a shape mismatch) as null, infinity as "inf"."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


def output_metrics(name: str, actual: np.ndarray, reference: np.ndarray, atol: float, rtol: float,
                   top_k: int | None = None) -> OutputMetrics:
    a, r = np.asarray(actual), np.asarray(reference)
    if a.shape != r.shape:
        return _shape_mismatch(name, a, r, top_k)
    a64, r64 = a.astype(np.float64), r.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(r64)
    same_special = ~finite & ((a64 == r64) | (np.isnan(a64) & np.isnan(r64)))
    nonfinite = int((~finite & ~same_special).sum())
    err = np.abs(a64[finite] - r64[finite])
    rel = err / (np.abs(r64[finite]) + EPS)
    bound = atol + rtol * np.abs(r64[finite])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(err == 0, 0.0, err / bound)
    ratio = float("inf") if nonfinite else (float(ratios.max()) if ratios.size else 0.0)
    mismatches = nonfinite + int((err > bound).sum())
    af, rf = np.where(finite, a64, 0.0), np.where(finite, r64, 0.0)
    return OutputMetrics(
        name=name, shape=tuple(a.shape), reference_shape=tuple(r.shape), dtype=str(a.dtype),
        max_abs=_max(err), mean_abs=_mean(err), max_rel=_max(rel), mean_rel=_mean(rel),
        cosine=cosine(af.reshape(-1), rf.reshape(-1)) if finite.any() or not a.size else float("nan"),
        min_row_cosine=min_row_cosine(af, rf, finite) if a.ndim >= 2 else None,
        top_k=top_k, top_k_agreement=top_k_agreement(a64, r64, top_k) if top_k else None,
        mismatches=mismatches, nonfinite_mismatches=nonfinite, size=int(a.size),
        tolerance_ratio=ratio, passed=mismatches == 0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; 1 when both are zero, 0 when only one is."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def min_row_cosine(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """The smallest cosine similarity over rows (the last axis), skipping rows with no `valid`
    element; None for an empty tensor, NaN when no row has a valid element."""
    if a.size == 0:
        return None
    rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    keep = np.ones(len(rows_a), bool) if valid is None else valid.reshape(-1, a.shape[-1]).any(axis=1)
    values = [cosine(x, y) for x, y, k in zip(rows_a, rows_b, keep) if k]
    return min(values) if values else float("nan")


def top_k_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float | None:
    """Fraction of rows (last axis) whose k largest entries have the same index set;
    None when a row has fewer than k entries or the tensor is empty (not classifier-like)."""
    if a.ndim == 0 or a.size == 0 or a.shape[-1] < k:
        return None
    rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    # NaN sorts last in argsort; negate so the largest come first, stable for ties.
    top_a = np.argsort(-rows_a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-rows_b, axis=1, kind="stable")[:, :k]
    same = [set(x.tolist()) == set(y.tolist()) for x, y in zip(top_a, top_b)]
    return float(np.mean(same))


def _shape_mismatch(name: str, a: np.ndarray, r: np.ndarray, top_k: int | None) -> OutputMetrics:
    nan = float("nan")
    return OutputMetrics(name=name, shape=tuple(a.shape), reference_shape=tuple(r.shape), dtype=str(a.dtype),
                         max_abs=nan, mean_abs=nan, max_rel=nan, mean_rel=nan, cosine=nan, min_row_cosine=None,
                         top_k=top_k, top_k_agreement=None, mismatches=int(max(a.size, r.size)),
                         nonfinite_mismatches=0, size=int(a.size), tolerance_ratio=float("inf"), passed=False)


def _max(x: np.ndarray) -> float:
    return float(x.max()) if x.size else 0.0


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else 0.0


def _json_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v

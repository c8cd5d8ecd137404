"""Per-tensor activation range calibrators, and per-channel weight scales.

Every calibrator has one interface: `observe(tensor)` once per calibration batch, then
`amax()`, the largest |x| the quantized type should represent. The scale follows as
`scale = amax / qmax` (int8 symmetric: qmax 127; fp8 e4m3: qmax 448).

- MinMax: amax = max |x| over everything observed. Exact, but one outlier sets the scale.
- Percentile(p): the p-th percentile of |x| over everything observed, read from a bounded
  histogram (histogram.py: 2048 bins, range widened by exact re-binning), so memory does
  not grow with the data. Accurate to one bin width.
- Entropy: TensorRT's entropy (KL-divergence) calibration. Design note:
    1. Build the histogram H of |x| (2048 bins of width w over [0, range)).
    2. Zeros from ReLU-like ops would dominate bin 0 and push the choice towards small
       thresholds, so H[0] is replaced by H[1] (as NVIDIA's pytorch-quantization does).
    3. For each candidate threshold i in [128, 2048]:
       - P = H[0:i], with the outliers sum(H[i:]) folded into P[i-1]: the distribution
         after clipping at i*w.
       - Quantize H[0:i] (without the outliers) into 128 levels (bin j goes to level
         floor(j*128/i), as TensorRT uses 128 levels for int8), then expand back to i bins:
         each level's count is spread evenly over its bins where P is non-zero (bins
         where P is zero stay zero).
       - Normalize both, smooth zero bins (each zero bin gets eps = 1e-4, taken
         proportionally from the non-zero bins, so a bin where P > 0 and Q = 0 costs a
         large but finite divergence), and compute KL(P || Q) = sum P log(P / Q).
    4. Pick the i of least KL (the largest such i on ties); amax = (i + 0.5) * w, capped
       at the largest |x| observed.
  Clipping a few outliers loses little information while the finer grid gained for the
  bulk of the distribution gains much, so heavy-tailed data gets a threshold well below
  max |x|; for data without outliers (uniform) the threshold stays near max |x|.

Weights are not calibrated: `weight_scales` gives exact per-channel symmetric scales.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from kiln.calibration.histogram import NUM_BINS, AbsHistogram, abs_values
from kiln.errors import KilnError

INT8_QMAX = 127.0
FP8_E4M3_QMAX = 448.0
QMAX = {"int8": INT8_QMAX, "fp8": FP8_E4M3_QMAX, "float8_e4m3fn": FP8_E4M3_QMAX}

ENTROPY_LEVELS = 128  # quantized bins per candidate, as TensorRT uses for int8
_SMOOTH_EPS = 1e-4


class Calibrator(Protocol):
    def observe(self, tensor: np.ndarray | torch.Tensor) -> None: ...

    def amax(self) -> float: ...


def _nothing_observed(kind: str) -> KilnError:
    return KilnError(f"the {kind} calibrator has observed no values; feed it calibration batches with "
                     "observe() before asking for amax().")


class MinMax:
    """amax = max |x| over every observed finite value."""

    def __init__(self) -> None:
        self._amax: float | None = None

    def observe(self, tensor: np.ndarray | torch.Tensor) -> None:
        values = abs_values(tensor)
        if values.size:
            top = float(values.max())
            self._amax = top if self._amax is None else max(self._amax, top)

    def amax(self) -> float:
        if self._amax is None:
            raise _nothing_observed("minmax")
        return self._amax


class Percentile:
    """amax = the p-th percentile of |x| (0 < p <= 100), within one histogram bin width."""

    def __init__(self, p: float = 99.99, num_bins: int = NUM_BINS) -> None:
        if not 0.0 < p <= 100.0:
            raise KilnError(f"percentile {p} is outside (0, 100]; pass e.g. 99.99.")
        self.p = p
        self.histogram = AbsHistogram(num_bins)

    def observe(self, tensor: np.ndarray | torch.Tensor) -> None:
        self.histogram.observe(tensor)

    def amax(self) -> float:
        if self.histogram.total == 0:
            raise _nothing_observed("percentile")
        return self.histogram.percentile(self.p)


class Entropy:
    """TensorRT's KL-divergence threshold search over a histogram of |x| (module docstring)."""

    def __init__(self, num_bins: int = NUM_BINS, levels: int = ENTROPY_LEVELS) -> None:
        if levels > num_bins:
            raise KilnError(f"entropy calibration needs at least as many bins ({num_bins}) as quantized "
                            f"levels ({levels}); use {NUM_BINS} bins and {ENTROPY_LEVELS} levels.")
        self.levels = levels
        self.histogram = AbsHistogram(num_bins)

    def observe(self, tensor: np.ndarray | torch.Tensor) -> None:
        self.histogram.observe(tensor)

    def amax(self) -> float:
        h = self.histogram
        if h.total == 0:
            raise _nothing_observed("entropy")
        if h.range == 0.0:
            return 0.0
        # Never past the largest |x| seen: the widened range can leave empty bins above it.
        return min((best_threshold_bin(h.counts, self.levels) + 0.5) * h.bin_width, h.max)


def best_threshold_bin(counts: np.ndarray, levels: int = ENTROPY_LEVELS) -> int:
    """The bin count i in [levels, len(counts)] whose clipped distribution loses least (KL)."""
    hist = np.asarray(counts, dtype=np.float64).copy()
    if hist.size > 1:
        hist[0] = hist[1]  # ignore the zero spike of ReLU-like activations (step 2)
    if hist.sum() == 0.0:  # nothing but zeros (after step 2): keep the whole range
        return hist.size
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    best_i, best_kl = hist.size, np.inf
    for i in range(levels, hist.size + 1):
        p = hist[:i].copy()
        if i < hist.size:
            p[-1] += tail[i]
        kl = _kl(p, _quantize_expand(hist[:i], p != 0, levels))
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i


def _quantize_expand(ref: np.ndarray, nonzero: np.ndarray, levels: int) -> np.ndarray:
    """Merge `ref` into `levels` bins, then spread each level evenly over its `nonzero` bins."""
    i = ref.size
    level = (np.arange(i) * levels) // i  # [i] -> level of each bin
    merged = np.bincount(level, weights=ref, minlength=levels)
    spread = np.bincount(level, weights=nonzero.astype(np.float64), minlength=levels)
    per_bin = np.divide(merged, spread, out=np.zeros_like(merged), where=spread > 0)
    return np.where(nonzero, per_bin[level], 0.0)


def _smooth(d: np.ndarray) -> np.ndarray:
    """Normalize, then move eps onto each zero bin, taken evenly from the non-zero bins."""
    total = d.sum()
    if total <= 0.0:
        return np.full(d.size, 1.0 / d.size)
    d = d / total
    zero = d == 0
    n_zero = int(zero.sum())
    if n_zero == 0 or n_zero == d.size:
        return d
    eps1 = _SMOOTH_EPS * n_zero / (d.size - n_zero)
    return np.where(zero, _SMOOTH_EPS, d - eps1)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = _smooth(p), _smooth(q)
    mask = p > 0
    q = np.maximum(q, 1e-12)  # a non-zero bin smaller than eps1 can go negative after smoothing
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


METHODS = ("entropy", "minmax", "percentile")


def make_calibrator(method: str, percentile: float = 99.99) -> Calibrator:
    """A fresh calibrator for `method` (one of METHODS)."""
    if method == "minmax":
        return MinMax()
    if method == "percentile":
        return Percentile(percentile)
    if method == "entropy":
        return Entropy()
    raise KilnError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}.")


def scale_from_amax(amax: float, qmax: float = INT8_QMAX) -> float:
    """Symmetric scale: amax maps to qmax (int8 127, fp8 e4m3 448)."""
    return amax / qmax


def weight_scales(w: np.ndarray | torch.Tensor, axis: int, qmax: float = INT8_QMAX, *,
                  per_tensor: bool = False) -> np.ndarray:
    """Per-channel symmetric scales along `axis`: max |w| over the other axes / qmax, float32;
    with per_tensor, one scale for the whole weight (max |w| / qmax) as a [1] array.

    An all-zero channel (weight) gets scale 1.0 (any scale quantizes zeros exactly; 0 would divide by zero).
    """
    t = w.detach().to("cpu", torch.float32) if isinstance(w, torch.Tensor) else torch.from_numpy(
        np.asarray(w, dtype=np.float32))
    if t.dim() == 0:
        raise KilnError("weight_scales got a scalar weight; per-channel scales need a tensor with a channel "
                        "axis (use scale_from_amax for per-tensor scales).")
    if not -t.dim() <= axis < t.dim():
        raise KilnError(f"channel axis {axis} is out of range for a weight of shape {tuple(t.shape)}; "
                        f"pass an axis in [{-t.dim()}, {t.dim() - 1}] (0 for Conv/Gemm output channels).")
    if qmax <= 0:
        raise KilnError(f"qmax must be positive, got {qmax}; use 127 for int8 or 448 for fp8 e4m3.")
    channels = t.movedim(axis, 0).reshape(t.shape[axis], -1).abs()  # [C, rest]
    amax = channels.amax(dim=1) if channels.shape[1] else torch.zeros(t.shape[axis])
    if per_tensor:
        amax = amax.amax(dim=0, keepdim=True) if amax.numel() else torch.zeros(1)
    scales = amax / torch.tensor(qmax, dtype=torch.float32)
    return torch.where(amax > 0, scales, torch.ones_like(scales)).numpy()

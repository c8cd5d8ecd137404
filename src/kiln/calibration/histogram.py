"""A bounded histogram of |x| that widens its range as larger values arrive.

Design note. Calibration sees an unknown number of batches, so the histogram keeps a fixed
number of bins (2048) over [0, range). The first non-zero batch sets the range to its
max |x|. When a later batch holds a larger value, the range doubles (as often as needed)
and each pair of neighbouring bins merges into one: with a power-of-two bin count that
re-binning is exact, no count is smeared or guessed. The price is resolution: the bin width
may end up to twice as wide as the final max alone would need. Non-finite values (inf,
NaN) are skipped; they carry no range information a finite scale could honour.
"""
from __future__ import annotations

import numpy as np
import torch

from kiln.errors import KilnError

NUM_BINS = 2048


def abs_values(tensor: np.ndarray | torch.Tensor) -> np.ndarray:
    """|x| of the finite elements, flattened, as float32 numpy (torch bf16/fp8 widen first)."""
    if isinstance(tensor, torch.Tensor):
        arr = tensor.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(tensor, dtype=np.float32)
    flat = np.abs(arr.reshape(-1))
    return flat[np.isfinite(flat)]


class AbsHistogram:
    """Counts of |x| in NUM_BINS equal bins over [0, range); values equal to range fall in the last bin."""

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        if num_bins <= 0 or num_bins & (num_bins - 1):
            raise KilnError(f"a histogram needs a power-of-two bin count (exact re-binning); got {num_bins}. "
                            f"Use {NUM_BINS}.")
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.float64)
        self.range = 0.0
        self.zeros = 0  # values seen while range is still 0 (all zero so far)
        self.total = 0
        self.max = 0.0  # largest |x| seen: the range may be up to twice as wide

    @property
    def bin_width(self) -> float:
        return self.range / self.num_bins

    def observe(self, tensor: np.ndarray | torch.Tensor) -> None:
        values = abs_values(tensor)
        if values.size == 0:
            return
        self.total += int(values.size)
        top = float(values.max())
        self.max = max(self.max, top)
        if top == 0.0 and self.range == 0.0:
            self.zeros += int(values.size)
            return
        if self.range == 0.0:
            self.range = top
            self.counts[0] += self.zeros
            self.zeros = 0
        elif top > self.range:
            self._widen(top)
        idx = np.minimum((values * (self.num_bins / self.range)).astype(np.int64), self.num_bins - 1)
        self.counts += np.bincount(idx, minlength=self.num_bins)

    def _widen(self, top: float) -> None:
        factor = 1
        while self.range * factor < top:
            factor *= 2
        self.range *= factor
        if factor >= self.num_bins:
            total = self.counts.sum()
            self.counts[:] = 0.0
            self.counts[0] = total
            return
        merged = self.counts.reshape(-1, factor).sum(axis=1)  # [num_bins // factor]
        self.counts[:] = 0.0
        self.counts[: merged.size] = merged

    def percentile(self, p: float) -> float:
        """The p-th percentile of the observed |x|, linear inside the bin that crosses it."""
        if self.total == 0:
            raise KilnError("the histogram has observed no values; call observe() with calibration data "
                            "before asking for a percentile.")
        if self.range == 0.0:
            return 0.0
        target = self.total * p / 100.0
        cdf = np.cumsum(self.counts)
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(i, self.num_bins - 1)
        before = cdf[i - 1] if i > 0 else 0.0
        inside = self.counts[i]
        frac = (target - before) / inside if inside > 0 else 1.0
        return min(float((i + min(max(frac, 0.0), 1.0)) * self.bin_width), self.max)

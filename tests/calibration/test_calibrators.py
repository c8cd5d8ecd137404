"""Range calibrators and weight scales: exact where the math is exact, bounded where it is binned."""
import numpy as np
import pytest
import torch

from kiln.calibration.calibrators import (FP8_E4M3_QMAX, Entropy, MinMax, Percentile, make_calibrator,
                                          scale_from_amax, weight_scales)
from kiln.calibration.histogram import AbsHistogram
from kiln.errors import KilnError


def _gauss(n=100_000, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_minmax_is_exact_over_batches():
    cal = MinMax()
    cal.observe(np.array([[0.5, -3.25], [1.0, 2.0]], dtype=np.float32))
    cal.observe(torch.tensor([-1.0, 7.5, float("inf"), float("nan")]))  # non-finite values are skipped
    cal.observe(np.array([4.0], dtype=np.float32))
    assert cal.amax() == 7.5


def test_calibrator_without_data_names_the_fix():
    for method in ("minmax", "percentile", "entropy"):
        with pytest.raises(KilnError, match="observe"):
            make_calibrator(method).amax()
    with pytest.raises(KilnError, match="unknown calibration method 'kl'"):
        make_calibrator("kl")
    with pytest.raises(KilnError, match="outside"):
        Percentile(0)


@pytest.mark.parametrize("p", [50.0, 99.0, 99.99])
def test_percentile_matches_numpy_within_one_bin(p):
    x = _gauss()
    cal = Percentile(p)
    for batch in np.array_split(x, 7):
        cal.observe(batch)
    width = cal.histogram.bin_width
    assert abs(cal.amax() - np.percentile(np.abs(x), p)) <= width


def test_histogram_widens_exactly():
    # Range 1 then 3.5: doubles twice to 4, merging groups of 4 bins; no count is lost or moved.
    h = AbsHistogram(8)
    h.observe(np.array([0.0, 0.1, 0.3, 0.6, 1.0]))
    h.observe(np.array([3.5, -2.1]))
    assert h.range == 4.0 and h.total == 7
    np.testing.assert_array_equal(h.counts, [3, 2, 0, 0, 1, 0, 0, 1])


def test_percentile_grows_range_over_batches():
    x = np.linspace(0, 10, 10_001, dtype=np.float32)
    cal = Percentile(90.0)
    for batch in np.array_split(x, 10):  # increasing batches: the range widens nine times
        cal.observe(batch)
    assert cal.histogram.range >= 10.0
    assert abs(cal.amax() - np.percentile(x, 90.0)) <= cal.histogram.bin_width


def test_entropy_clips_outliers_of_a_gaussian():
    x = _gauss()
    x[:10] = 100.0
    cal = Entropy()
    cal.observe(x)
    assert 2.0 < cal.amax() < 10.0


def test_entropy_of_plain_gaussian_is_below_max():
    x = _gauss()
    cal = Entropy()
    cal.observe(x)
    assert 2.5 < cal.amax() < np.abs(x).max()


def test_entropy_keeps_near_max_for_uniform():
    x = np.random.default_rng(1).uniform(-1, 1, 100_000).astype(np.float32)
    cal = Entropy()
    cal.observe(x)
    top = float(np.abs(x).max())
    assert 0.95 * top <= cal.amax() <= top


def test_entropy_of_zeros_is_zero():
    cal = Entropy()
    cal.observe(np.zeros(10, np.float32))
    assert cal.amax() == 0.0


def test_weight_scales_are_exact_per_channel():
    w = np.array([[[1.0, -2.0]], [[0.5, 0.25]], [[0.0, 0.0]]], dtype=np.float32)  # [3, 1, 2]
    f = np.float32
    np.testing.assert_array_equal(weight_scales(w, 0), [f(2) / f(127), f(0.5) / f(127), f(1)])  # zero channel: 1
    np.testing.assert_array_equal(weight_scales(torch.from_numpy(w), -1, qmax=FP8_E4M3_QMAX),
                                  np.float32([1.0, 2.0]) / np.float32(448))
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    want = np.abs(w).max(axis=(0, 2, 3)) / np.float32(127)
    got = weight_scales(w, 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_weight_scales_reject_bad_axis():
    with pytest.raises(KilnError, match="axis 2 is out of range"):
        weight_scales(np.ones((2, 3)), 2)


def test_scale_from_amax():
    assert scale_from_amax(254.0) == 2.0
    assert scale_from_amax(448.0, FP8_E4M3_QMAX) == 1.0

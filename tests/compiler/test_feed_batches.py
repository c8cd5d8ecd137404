"""compiler/feed_batches.py: calibration feeds cut to the batches an engine's profile takes."""
from __future__ import annotations

import numpy as np

from kiln.compiler.feed_batches import batches_drawn, fit_to_profile, within

PROFILE = {"x": {"min": [16, 4], "opt": [16, 4], "max": [32, 4]}}


def _feeds(sizes, item=4):
    start = 0
    out = []
    for n in sizes:
        out.append({"x": np.arange(start, start + n)[:, None].repeat(item, 1).astype(np.float32)})
        start += n
    return out


def test_feeds_that_fit_are_kept_as_they_are():
    feeds = _feeds([16, 20, 32, 16])
    got = fit_to_profile(feeds, PROFILE, 3)
    assert len(got) == 3 and all(np.array_equal(g["x"], f["x"]) for g, f in zip(got, feeds))
    assert fit_to_profile(feeds, None, 2)[1]["x"].shape == (20, 4)


def test_small_batches_are_joined_into_the_opt_batch_wrapping_at_the_end():
    got = fit_to_profile(_feeds([8, 8, 8]), PROFILE, 3)          # 24 samples -> 16 + (8 + 8 repeated)
    assert [g["x"].shape for g in got] == [(16, 4), (16, 4)]
    assert list(got[0]["x"][:, 0]) == list(range(16))
    assert list(got[1]["x"][:, 0]) == list(range(16, 24)) + list(range(8))
    assert len(fit_to_profile(_feeds([8] * 10), PROFILE, 3)) == 3   # at most `count`


def test_other_dims_outside_the_range_leave_nothing():
    assert fit_to_profile(_feeds([8, 8], item=5), PROFILE, 3) == []
    assert not within({"x": np.zeros((8, 4))}, PROFILE) and within({"x": np.zeros((20, 4))}, PROFILE)
    assert within({"y": np.zeros(3)}, PROFILE)                      # inputs the profile does not name


def test_batches_drawn_counts_the_feeds_the_cut_takes_samples_from():
    assert batches_drawn(_feeds([16, 20, 32, 16]), PROFILE, 3) == 3      # kept as they are
    assert batches_drawn(_feeds([16, 20]), PROFILE, 3) == 2
    assert batches_drawn(_feeds([8] * 10), PROFILE, 3) == 6              # 3 batches of 16 from 6 feeds of 8
    assert batches_drawn(_feeds([8, 8, 8]), PROFILE, 3) == 3             # wraps around: all of them
    assert batches_drawn([], PROFILE, 3) == 0

"""compiler/profiles.symbol_bounds: the (min, max) each symbolic dim can take over a build's profiles."""
from __future__ import annotations

from kiln.compiler.profiles import symbol_bounds
from kiln.config import Profile


def test_a_shared_symbol_takes_the_intersection_per_profile_and_the_hull_over_profiles() -> None:
    dims = {"ids": ["batch", "seq"], "mask": ["batch", "seq"], "image": [3, "side"]}
    one = Profile.from_ranges({"ids": ((1, 8), (4, 64), (8, 128)), "mask": ((2, 8), (4, 64), (16, 128)),
                               "image": ((3, 32), (3, 64), (3, 64))})
    two = Profile.from_ranges({"ids": ((16, 1), (16, 1), (32, 1)), "mask": ((16, 1), (16, 1), (32, 1)),
                               "image": ((3, 224), (3, 224), (3, 224))})
    assert symbol_bounds((one,), dims) == {"batch": (2, 8), "seq": (8, 128), "side": (32, 64)}
    assert symbol_bounds((one, two), dims) == {"batch": (2, 32), "seq": (1, 128), "side": (32, 224)}
    assert symbol_bounds((one,), {"ids": [4, 16]}) == {}     # static dims: nothing to bound

"""The timing cache file: keys, round trip, atomic writes, merging and corrupt files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from kiln.compiler.timing_cache import Entry, TimingCache, TimingCacheWarning, candidate_key, environment, op_signature

ENV = {"device": "test", "name": "fake"}


def test_entries_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    cache = TimingCache(path, ENV)
    sig = op_signature("Relu", {}, [(4, 8)], ["float32"])
    cache.put(sig, candidate_key("Relu.fast", 1, {}), Entry("ok", 1.25))
    cache.put(sig, candidate_key("Relu.bad", 2, {"BLOCK": 64}), Entry("invalid"))
    cache.save()
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temp file left behind
    again = TimingCache(path, ENV)
    assert again.get(sig, candidate_key("Relu.fast", 1, {})) == Entry("ok", 1.25)
    assert again.get(sig, candidate_key("Relu.bad", 2, {"BLOCK": 64})) == Entry("invalid")
    # Another tactic version, config or environment is another key.
    assert again.get(sig, candidate_key("Relu.fast", 2, {})) is None
    assert again.get(sig, candidate_key("Relu.bad", 2, {"BLOCK": 32})) is None
    assert TimingCache(path, {**ENV, "torch": "other"}).get(sig, candidate_key("Relu.fast", 1, {})) is None


def test_op_signatures_tell_attributes_shapes_and_dtypes_apart() -> None:
    base = op_signature("Conv", {"pads": [1, 1], "w": np.ones(3)}, [(1, 3, 8, 8), None], ["float16", None])
    assert base == op_signature("Conv", {"w": np.ones(3), "pads": [1, 1]}, [(1, 3, 8, 8), None], ["float16", None])
    assert base != op_signature("Conv", {"pads": [1, 1], "w": np.zeros(3)}, [(1, 3, 8, 8), None], ["float16", None])
    assert base != op_signature("Conv", {"pads": [1, 1], "w": np.ones(3)}, [(2, 3, 8, 8), None], ["float16", None])
    assert base != op_signature("Conv", {"pads": [1, 1], "w": np.ones(3)}, [(1, 3, 8, 8), None], ["float32", None])


def test_saving_merges_with_entries_another_build_wrote(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    first, second = TimingCache(path, ENV), TimingCache(path, ENV)
    first.put("sig", "a", Entry("ok", 1.0))
    first.save()
    second.put("sig", "b", Entry("ok", 2.0))
    second.save()
    merged = TimingCache(path, ENV)
    assert merged.get("sig", "a") == Entry("ok", 1.0) and merged.get("sig", "b") == Entry("ok", 2.0)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": "other"}),
                                  json.dumps({"format": "kiln-timing-cache", "version": 99, "entries": {}}),
                                  json.dumps({"format": "kiln-timing-cache", "version": 1,
                                              "entries": {"k": {"status": "fast", "ms": 1}}})])
def test_a_corrupt_cache_warns_and_is_rebuilt(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cache.json"
    path.write_text(text)
    with pytest.warns(TimingCacheWarning, match="cannot be used.*timed again"):
        cache = TimingCache(path, ENV)
    assert cache.entries == {}
    cache.put("sig", "a", Entry("ok", 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the save does not warn a second time
        cache.save()
    assert TimingCache(path, ENV).get("sig", "a") == Entry("ok", 1.0)
    assert json.loads(path.read_text())["format"] == "kiln-timing-cache"


def test_nothing_is_written_without_new_entries(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    TimingCache(path, ENV).save()
    assert not path.exists()


def test_the_cpu_environment_names_the_software() -> None:
    from kiln.compiler.timer import METHOD_VERSION
    env = environment("cpu")
    assert env["device"] == "cpu" and env["torch"]
    assert env["timer"] == METHOD_VERSION      # timings taken another way are another environment

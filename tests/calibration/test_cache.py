"""The calibration cache: round trip, misses that trigger recalibration, corrupt files."""
import json

import pytest

from kiln.calibration.cache import load_cache, model_hash, save_cache
from kiln.errors import KilnError

RANGES = {"x": 1.5, "conv_out": 6.25, "relu": 0.0}


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "model.calib.json"
    h = model_hash(b"onnx bytes")
    save_cache(path, RANGES, graph_hash=h, method="percentile", params={"percentile": 99.99})
    assert load_cache(path, h, "percentile") == RANGES
    assert load_cache(path, h, "percentile", params={"percentile": 99.99}) == RANGES
    assert [p.name for p in path.parent.iterdir()] == ["model.calib.json"]  # no temporary file left


def test_misses_return_none(tmp_path):
    path = tmp_path / "c.json"
    h = model_hash(b"a")
    assert load_cache(path, h, "entropy") is None  # no file yet
    save_cache(path, RANGES, graph_hash=h, method="entropy")
    assert load_cache(path, model_hash(b"b"), "entropy") is None
    assert load_cache(path, h, "minmax") is None
    save_cache(path, RANGES, graph_hash=h, method="percentile", params={"percentile": 99.9})
    assert load_cache(path, h, "percentile", params={"percentile": 99.99}) is None
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    assert load_cache(path, h, "percentile") is None


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "other"}',
                                  '{"format": "kiln-calibration", "version": 1}'])
def test_corrupt_file_names_it_and_says_delete(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(KilnError, match="bad.json.*corrupt.*delete it"):
        load_cache(path, "h", "entropy")


def test_corrupt_range_value(tmp_path):
    path = tmp_path / "c.json"
    save_cache(path, RANGES, graph_hash="h", method="minmax")
    doc = json.loads(path.read_text())
    doc["ranges"]["x"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(KilnError, match="corrupt.*'x'"):
        load_cache(path, "h", "minmax")


def test_save_refuses_bad_ranges(tmp_path):
    with pytest.raises(KilnError, match="'y'"):
        save_cache(tmp_path / "c.json", {"y": float("nan")}, graph_hash="h", method="minmax")
    assert not (tmp_path / "c.json").exists()

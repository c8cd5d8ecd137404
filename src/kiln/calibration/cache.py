"""The calibration cache: activation ranges on disk, so a rebuild skips calibration.

A JSON file: {"format": "kiln-calibration", "version": 1, "graph_hash": sha256 hex of the
ONNX model bytes, "method": "entropy" | "minmax" | "percentile", "params": {...},
"ranges": {tensor name: amax}} and, from a SmoothQuant build, "channel_max": {tensor name: [max |x|
of each last-axis channel]} (optional, so version-1 files with or without it read alike). Written atomically (temporary file, then rename). A cache
for another model, method, parameters or format version is a miss (None): the caller
recalibrates and overwrites it. A file that is not such JSON is an error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from kiln.errors import KilnError

CACHE_FORMAT = "kiln-calibration"
CACHE_VERSION = 1


def model_hash(model_bytes: bytes) -> str:
    """The graph hash a cache is keyed by: SHA-256 (hex) of the serialized ONNX model."""
    return hashlib.sha256(model_bytes).hexdigest()


def save_cache(path: str | os.PathLike, ranges: Mapping[str, float], *, graph_hash: str, method: str,
               params: Mapping[str, Any] | None = None, channel_max: Mapping[str, Any] | None = None) -> None:
    """Write the ranges (and any per-channel maxima) atomically: a temporary file in the same
    folder, then rename over `path`."""
    bad = [n for n, a in ranges.items() if not (isinstance(a, (int, float)) and math.isfinite(a) and a >= 0)]
    if bad:
        raise KilnError(f"range of tensor {bad[0]!r} is {ranges[bad[0]]!r}, not a finite amax >= 0; "
                        "calibrate again before saving the cache.")
    doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "graph_hash": graph_hash, "method": method,
           "params": dict(params or {}), "ranges": {n: float(a) for n, a in ranges.items()}}
    if channel_max:
        doc["channel_max"] = {n: [float(a) for a in m] for n, m in channel_max.items()}
    text = json.dumps(doc, indent=1, sort_keys=True)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cache(path: str | os.PathLike, expected_graph_hash: str, method: str,
               params: Mapping[str, Any] | None = None) -> dict[str, float] | None:
    """The cached ranges, or None when the file is absent or was made for another model, method,
    parameters (when `params` is given) or format version. Raises KilnError for a corrupt file."""
    p = Path(path)
    if not p.is_file():
        return None
    doc = _read(p)
    if doc is None or doc["graph_hash"] != expected_graph_hash or doc["method"] != method:
        return None
    if params is not None and doc["params"] != json.loads(json.dumps(dict(params))):
        return None
    return dict(doc["ranges"])


def load_channel_max(path: str | os.PathLike, expected_graph_hash: str, method: str,
                     params: Mapping[str, Any] | None = None) -> dict[str, list[float]]:
    """The per-channel maxima a cache holds ({} when it holds none, or is a miss as for load_cache)."""
    if load_cache(path, expected_graph_hash, method, params) is None:
        return {}
    doc = _read(Path(path))
    return dict(doc.get("channel_max", {})) if doc is not None else {}


def _read(p: Path) -> dict[str, Any] | None:
    """The checked document, or None when another format version wrote it."""
    def corrupt(reason: str) -> KilnError:
        return KilnError(f"calibration cache {str(p)!r} is corrupt ({reason}); delete it and kiln will "
                         "calibrate again.")

    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        raise corrupt(f"no \"format\": \"{CACHE_FORMAT}\" field")
    if doc.get("version") != CACHE_VERSION:
        return None
    for key, kind in (("version", int), ("graph_hash", str), ("method", str), ("params", dict), ("ranges", dict)):
        if not isinstance(doc.get(key), kind):
            raise corrupt(f"field {key!r} is missing or not a {kind.__name__}")
    for name, amax in doc["ranges"].items():
        if isinstance(amax, bool) or not isinstance(amax, (int, float)) or not math.isfinite(amax) or amax < 0:
            raise corrupt(f"range of {name!r} is {amax!r}, not a finite amax >= 0")
    channel_max = doc.get("channel_max", {})
    if not isinstance(channel_max, dict) or not all(
            isinstance(m, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                                        and a >= 0 for a in m) for m in channel_max.values()):
        raise corrupt("field 'channel_max' is not {tensor name: [finite max >= 0, ...]}")
    return doc

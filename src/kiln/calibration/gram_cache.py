"""GPTQ's Gram matrices beside the calibration cache, so a GPTQ build can skip calibration too.

The ranges' JSON (calibration/cache.py) is small; the Gram matrices are not (BERT-base: ~0.5 GB
in float32), so they go into an .npz file next to it, CACHE + ".gram.npz" (numeric arrays only,
read with allow_pickle=False): one float32 array per activation a matmul reads ([K, K]) and per
2-D convolution ([group, K, K]), keyed g0, g1, ..., and "meta", a JSON string naming them and
tying the file to the model, the calibration method and parameters, and the ranges it was
calibrated with (the SHA-256 of the cached ranges): a range cache rewritten from other data
makes an older Gram file a miss. Written atomically (temporary file, then rename). A file that
numpy cannot read, or whose metadata is not kiln's, is an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kiln.errors import KilnError

GRAM_FORMAT = "kiln-calibration-grams"
GRAM_VERSION = 1
SUFFIX = ".gram.npz"
Grams = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # (per activation, per convolution)


def gram_path(cache: str | os.PathLike) -> Path:
    """Where the Gram matrices of calibration cache `cache` live."""
    return Path(str(cache) + SUFFIX)


def ranges_digest(ranges: Mapping[str, float]) -> str:
    """SHA-256 of the ranges as the cache stores them (name-sorted JSON)."""
    text = json.dumps({n: float(a) for n, a in ranges.items()}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_grams(cache: str | os.PathLike, grams: Mapping[str, torch.Tensor], conv_grams: Mapping[str, torch.Tensor],
               *, graph_hash: str, method: str, params: Mapping[str, Any], ranges: Mapping[str, float]) -> None:
    """Write the Gram matrices next to `cache` atomically."""
    entries = [("act", n, g) for n, g in grams.items()] + [("conv", n, g) for n, g in conv_grams.items()]
    arrays = {f"g{i}": g.detach().to("cpu", torch.float32).contiguous().numpy() for i, (_, _, g) in enumerate(entries)}
    meta = {"format": GRAM_FORMAT, "version": GRAM_VERSION, **_key(graph_hash, method, params, ranges),
            "names": [[kind, name] for kind, name, _ in entries]}
    target = gram_path(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_grams(cache: str | os.PathLike, *, graph_hash: str, method: str, params: Mapping[str, Any],
               ranges: Mapping[str, float]) -> Grams | None:
    """The Gram matrices stored beside `cache`, or None when there are none or they were made for
    another model, method, parameters, ranges or format version. Raises KilnError for a corrupt file."""
    p = gram_path(cache)
    if not p.is_file():
        return None

    def corrupt(reason: str) -> KilnError:
        return KilnError(f"calibration Gram-matrix file {str(p)!r} is corrupt ({reason}); delete it and kiln will "
                         "calibrate again.")
    try:
        with np.load(p, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != GRAM_FORMAT:
                raise corrupt(f"no \"format\": \"{GRAM_FORMAT}\" metadata")
            if meta.get("version") != GRAM_VERSION or any(meta.get(k) != v for k, v in
                                                          _key(graph_hash, method, params, ranges).items()):
                return None
            names = meta.get("names")
            if not isinstance(names, list) or not all(isinstance(e, list) and len(e) == 2 for e in names):
                raise corrupt("its metadata names no matrices")
            out: Grams = ({}, {})
            for i, (kind, name) in enumerate(names):
                out[0 if kind == "act" else 1][str(name)] = torch.from_numpy(np.asarray(data[f"g{i}"], np.float32))
            return out
    except KilnError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from None


def _key(graph_hash: str, method: str, params: Mapping[str, Any], ranges: Mapping[str, float]) -> dict[str, str]:
    return {"graph_hash": graph_hash, "method": method, "params": json.dumps(dict(params), sort_keys=True),
            "ranges_sha256": ranges_digest(ranges)}

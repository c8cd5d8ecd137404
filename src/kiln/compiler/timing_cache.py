"""The timing cache: tactic timings on disk, reused across builds (`--timing-cache PATH`).

One entry per (environment, op signature, candidate):
  environment   GPU name and compute capability (or the CPU), torch, triton, CUDA, cuDNN
                and cuBLAS versions; any change there makes old timings meaningless; and the
                version of the synthetic inputs the tuner checks candidates on (an "invalid"
                verdict holds for the values it was reached on) and of the timing method
                (compiler/timer.py's METHOD_VERSION: timings taken another way do not compare);
  op signature  the qualified op, a digest of its attributes, its input shapes and dtypes;
  candidate     the tactic id, its version and its config.
An entry is the candidate's outcome there: {"status": "ok" | "invalid" | "error", "ms": float | None}.

The file is JSON, {"format": "kiln-timing-cache", "version": 1, "entries": {key: entry}},
written atomically (temp file + rename). Saving merges with what is on disk then, so two
builds sharing a cache lose no entries. An unreadable cache is not an error: the build
warns, times everything again and writes a fresh file.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

FORMAT = "kiln-timing-cache"
VERSION = 1


class TimingCacheWarning(UserWarning):
    """The timing cache file could not be used; the build goes on without its entries."""


@dataclass(frozen=True, slots=True)
class Entry:
    status: str                # "ok" (valid, timed) | "invalid" (wrong results) | "error" (raised)
    ms: float | None = None    # median time, for "ok"


def environment(device: str) -> dict[str, Any]:
    """What the timings depend on besides the op and the kernel."""
    from kiln.compiler.timer import METHOD_VERSION
    from kiln.engine.device import triton_version
    from kiln.runtime.synthetic import VERSION as INPUTS_VERSION

    env: dict[str, Any] = {"torch": torch.__version__, "triton": triton_version(), "inputs": INPUTS_VERSION,
                           "timer": METHOD_VERSION}
    if device != "cuda":
        return {"device": "cpu", "name": platform.processor() or platform.machine(), **env}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"device": "cuda", "name": props.name, "compute_capability": [props.major, props.minor],
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cublas": _cublas_version(), **env}


def op_signature(op: str, attrs: Mapping[str, Any], shapes: Sequence[Sequence[int] | None],
                 dtypes: Sequence[str | None]) -> str:
    shape_text = ";".join("-" if s is None else "x".join(str(d) for d in s) for s in shapes)
    return f"{op}|{_digest(_canonical(dict(attrs)))}|{shape_text}|{','.join(d or '-' for d in dtypes)}"


def candidate_key(tactic: str, version: int, config: Mapping[str, Any]) -> str:
    return f"{tactic}@{version}|{json.dumps(config, sort_keys=True, separators=(',', ':'))}"


class TimingCache:
    """Entries for one environment, loaded from and saved to one file."""

    def __init__(self, path: str | os.PathLike | None, env: Mapping[str, Any]) -> None:
        self.path = None if path is None else Path(path)
        self.env = _digest(dict(env))[:16]
        self.entries: dict[str, Entry] = {}
        self._new: dict[str, Entry] = {}
        if self.path is not None and self.path.exists():
            self.entries = _read(self.path)

    def _key(self, signature: str, candidate: str) -> str:
        return f"{self.env}|{signature}|{candidate}"

    def get(self, signature: str, candidate: str) -> Entry | None:
        return self.entries.get(self._key(signature, candidate))

    def put(self, signature: str, candidate: str, entry: Entry) -> None:
        key = self._key(signature, candidate)
        self.entries[key] = self._new[key] = entry

    def save(self) -> None:
        """Merge this build's new entries into the file (atomically); nothing to do without any."""
        if self.path is None or not self._new:
            return
        merged = _read(self.path, quiet=True) if self.path.exists() else {}
        merged.update(self._new)
        data = {"format": FORMAT, "version": VERSION,
                "entries": {k: {"status": e.status, "ms": e.ms} for k, e in sorted(merged.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._new.clear()


def _read(path: Path, quiet: bool = False) -> dict[str, Entry]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("it is not a kiln timing cache")
        if data.get("version") != VERSION:
            raise ValueError(f"it has version {data.get('version')!r}, this kiln reads version {VERSION}")
        entries = {}
        for k, e in data["entries"].items():
            ms = e["ms"]
            if e["status"] not in ("ok", "invalid", "error") or (ms is not None and not isinstance(ms, (int, float))):
                raise ValueError(f"entry {k!r} is malformed")
            entries[str(k)] = Entry(e["status"], None if ms is None else float(ms))
        return entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if not quiet:
            warnings.warn(f"timing cache {str(path)!r} cannot be used ({type(exc).__name__}: {exc}); the tactics "
                          "are timed again and the file is rewritten with fresh timings.", TimingCacheWarning,
                          stacklevel=3)
        return {}


def _canonical(value: Any) -> Any:
    """A JSON-able stand-in for an attribute value; tensors by dtype, shape and content hash."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        raw = t.view(torch.uint8) if t.numel() else t
        return {"dtype": str(t.dtype), "shape": list(value.shape),
                "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest()}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return f"{type(value).__name__}:{value!r}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _cublas_version() -> int | None:
    """cuBLAS's version as cublasGetVersion reports it (e.g. 120804), when the library loads."""
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        out = ctypes.c_int()
        try:
            # cublasGetProperty(MAJOR=0 / MINOR=1 / PATCH=2, int*) needs no handle.
            parts = []
            for prop in (0, 1, 2):
                if lib.cublasGetProperty(prop, ctypes.byref(out)) != 0:
                    return None
                parts.append(out.value)
            return parts[0] * 10000 + parts[1] * 100 + parts[2]
        except AttributeError:
            return None
    return None

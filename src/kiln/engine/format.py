"""The engine file: versioned, self-describing, never code.

Layout (all integers little-endian):
  magic      8 bytes  b"KILNENG\\0"
  version    u32      FORMAT_VERSION of the writer
  header_len u64
  header     header_len bytes of UTF-8 JSON (plan, bindings, config, device, tensor index)
  padding    to a multiple of ALIGN
  data       each tensor's raw bytes at header["tensors"][name]["offset"] (relative to
             the start of data), each aligned to ALIGN
  digest     32 bytes: SHA-256 of everything before it
Loading reads JSON and raw bytes only: no pickle, no eval.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from kiln.errors import EngineFormatError
from kiln.ir import dtypes

MAGIC = b"KILNENG\0"
FORMAT_VERSION = 1
ALIGN = 64
_PREFIX = struct.Struct("<8sIQ")


def _pad(n: int) -> int:
    return (-n) % ALIGN


def write_engine(path: str | os.PathLike, header: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write atomically: a temporary file in the same folder, then rename over `path`."""
    index: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        index[name] = {"dtype": dtypes.from_torch(t.dtype).name, "shape": list(t.shape),
                       "offset": offset, "nbytes": len(raw)}
        blobs.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    head = json.dumps({**header, "tensors": index}, sort_keys=True).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head
    prefix += b"\0" * _pad(len(prefix))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for chunk in (prefix, *blobs):
                f.write(chunk)
                digest.update(chunk)
            f.write(digest.digest())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_engine(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise EngineFormatError(f"engine file {str(p)!r} does not exist; build one with `kiln build MODEL.onnx -o {p}`.")
    data = p.read_bytes()
    where = str(p)
    if len(data) < _PREFIX.size + 32 or data[:8] != MAGIC:
        raise EngineFormatError(f"{where!r} is not a kiln engine (its first bytes are not the kiln magic); "
                                "pass a file written by `kiln build`.")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise EngineFormatError(f"{where!r} has engine format version {version}, newer than the {FORMAT_VERSION} "
                                "this kiln reads; upgrade kiln (pip install -U kiln) or rebuild the engine with this one.")
    body, stored = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != stored:
        raise EngineFormatError(f"{where!r} is corrupt or truncated: its checksum does not match its contents "
                                f"({len(data)} bytes). Rebuild it with `kiln build` or copy it again.")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EngineFormatError(f"{where!r} has an unreadable header; rebuild the engine.") from None
    start = _PREFIX.size + head_len
    start += _pad(start)
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.pop("tensors").items():
        lo = start + info["offset"]
        raw = bytearray(data[lo:lo + info["nbytes"]])
        dt = dtypes.from_name(info["dtype"]).torch
        t = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        tensors[name] = t.view(dt).reshape(info["shape"])
    return header, tensors

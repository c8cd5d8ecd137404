"""Byte-level edits of engine files, to make the broken engines the error tests need."""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from kiln.engine.format import read_engine, write_engine

FAKE_GPU = {"kind": "cuda", "name": "NVIDIA Fake GPU", "compute_capability": [1, 0], "multiprocessors": 1,
            "cuda": "0.0", "driver": None, "torch": "0.0", "triton": None}


def flip_middle_byte(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def truncate(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def with_format_version(src: Path, dst: Path, version: int) -> None:
    """Patch the u32 after the 8-byte magic and re-seal the SHA-256, so only the version check fires."""
    data = bytearray(src.read_bytes())
    data[8:12] = struct.pack("<I", version)
    body = bytes(data[:-32])
    dst.write_bytes(body + hashlib.sha256(body).digest())


def with_device(src: Path, dst: Path, device: dict) -> None:
    """A valid engine whose header claims another device (read_engine pops "tensors"; plan stays)."""
    header, tensors = read_engine(src)
    header["device"] = dict(device)
    write_engine(dst, header, tensors)

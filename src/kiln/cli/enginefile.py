"""Reading an engine file for inspection or rebuilding, without the device check.

`kiln.load` refuses an engine built for another GPU; `kiln inspect` and `kiln rebuild`
must still read it (that is how one finds out what it was built for, and fixes it).
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

from kiln.errors import EngineFormatError

if TYPE_CHECKING:
    import torch

REQUIRED = ("plan", "device", "build_config")


def read_unchecked(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of a valid engine file (magic, version and checksum checked)."""
    from kiln.engine.format import read_engine

    header, tensors = read_engine(path)
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise EngineFormatError(f"{str(path)!r} lacks {', '.join(missing)} in its header; it was not written by "
                                "`kiln build`. Rebuild it.")
    return header, tensors


def format_version(path: str | os.PathLike) -> int:
    """The u32 after the 8-byte magic (see kiln.engine.format's layout)."""
    with open(path, "rb") as f:
        return struct.unpack("<8sI", f.read(12))[1]

"""numpy -> torch for every element type kiln binds, including the ones numpy only knows
through ml_dtypes (bfloat16, float8, int4, ...). Sequence values are lists; an absent optional is None."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

# numpy (ml_dtypes) type name -> (torch dtype, raw numpy view type); None: widen instead of view.
_VIEWED = {
    "bfloat16": (torch.bfloat16, np.uint16),
    "float8_e4m3fn": (torch.float8_e4m3fn, np.uint8),
    "float8_e5m2": (torch.float8_e5m2, np.uint8),
    "float8_e4m3fnuz": (torch.float8_e4m3fnuz, np.uint8),
    "float8_e5m2fnuz": (torch.float8_e5m2fnuz, np.uint8),
}
_WIDENED = {"int4": np.int8, "uint4": np.uint8, "int2": np.int8, "uint2": np.uint8,
            "float4_e2m1fn": np.float32, "float8_e8m0fnu": np.float32}


def array_to_tensor(value: Any) -> Any:
    """A numpy array (or list of them, or None) as torch, without changing the element type."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return [array_to_tensor(v) for v in value]
    arr = np.asarray(value)
    name = arr.dtype.name
    if name in _VIEWED:
        dt, raw = _VIEWED[name]
        return torch.from_numpy(arr.copy(order="C").view(raw)).view(dt)
    if name in _WIDENED:
        return torch.from_numpy(arr.astype(_WIDENED[name]))
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return torch.from_numpy(arr)


VIEWED_TORCH = tuple(dt for dt, _ in _VIEWED.values())

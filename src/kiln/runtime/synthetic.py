"""Synthetic inputs at a profile's min/opt/max shapes, for probing, `kiln run` and `kiln bench`.

Floats are standard normal; integers are zeros (always a valid index for Gather/embedding
lookups); booleans are True.
"""
from __future__ import annotations

from typing import Sequence

import torch

from kiln.config import Profile
from kiln.engine.plan import Binding
from kiln.ir import dtypes


def synthetic_inputs(bindings: Sequence[Binding], profile: Profile | dict | None, point: str = "opt",
                     device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for b in bindings:
        dims = _dims(b, profile, point)
        dt = dtypes.from_name(b.dtype)
        if dt.is_float:
            t = torch.randn(dims, generator=gen).to(dt.torch)
        elif dt.name == "bool":
            t = torch.ones(dims, dtype=torch.bool)
        else:
            t = torch.zeros(dims, dtype=dt.torch)
        out[b.name] = t.to(device)
    return out


def _dims(b: Binding, profile: Profile | dict | None, point: str) -> list[int]:
    if isinstance(profile, Profile):
        r = profile.get(b.name)
        if r is not None:
            return list(getattr(r, point))
    elif isinstance(profile, dict) and b.name in profile:
        return list(profile[b.name][point])
    if all(isinstance(d, int) for d in b.shape):
        return [int(d) for d in b.shape]
    raise ValueError(f"input {b.name!r} has dynamic shape {list(b.shape)} and no profile gives its dims")

"""Synthetic inputs at a profile's min/opt/max shapes, for probing, `kiln run` and `kiln bench`.

Floats are standard normal; integers are zeros (always a valid index for Gather/embedding
lookups), except inputs named as masks, which are ones; booleans are True.

Masks: an integer attention mask of zeros masks every key (1 keeps a position, the convention
of HF-exported transformers). Attention over no key is 0 / 0, so every layer after it would
see NaN, and the tuner's and the accuracy tools' checks there (the reference NaN, any value
accepted) would check nothing. Ones are a batch without padding, the common input. An input
is a mask when its name contains "mask" (attention_mask, input_mask, padding_mask, ...).
"""
from __future__ import annotations

from typing import Sequence

import torch

from kiln.config import Profile
from kiln.engine.plan import Binding
from kiln.ir import dtypes

# Bumped whenever the values change: the timing cache keys its verdicts by it (2: masks are ones).
VERSION = 2


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
        elif is_mask(b.name):
            t = torch.ones(dims, dtype=dt.torch)
        else:
            t = torch.zeros(dims, dtype=dt.torch)
        out[b.name] = t.to(device)
    return out


def is_mask(name: str) -> bool:
    """Whether an input named `name` is taken for a mask (module docstring)."""
    return "mask" in name.lower()


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

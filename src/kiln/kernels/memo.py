"""Values derived from a tensor (an engine constant: a scale, a weight), made once and kept.

A kernel or tactic that needs a constant in another form (a reciprocal, a float32 copy, a
transposed weight) would otherwise make it on every call, a kernel launch each time. The table
is keyed by the tensor's identity with weak keys, so an entry lives as long as the engine's
constant does, and records the tensor's version counter: an in-place change makes it again.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch
from torch.utils.weak import WeakIdKeyDictionary


def derived_table() -> WeakIdKeyDictionary:
    """A table for `derived`: tensor -> (its version counter, {key: derived value})."""
    return WeakIdKeyDictionary()


def derived(table: WeakIdKeyDictionary, tensor: torch.Tensor, key: Hashable,
            make: Callable[[torch.Tensor], Any]) -> Any:
    """make(tensor), memoised in `table` per tensor (identity and version) and `key`."""
    hit = table.get(tensor)
    if hit is None or hit[0] != tensor._version:
        hit = (tensor._version, {})
        table[tensor] = hit
    if key not in hit[1]:
        hit[1][key] = make(tensor)
    return hit[1][key]

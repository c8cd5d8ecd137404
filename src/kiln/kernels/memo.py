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


def _version(tensor: torch.Tensor) -> int:
    """The tensor's version counter; -1 for an inference tensor, which has none (one made under
    torch.inference_mode, as the tuner and the runtime make a weight's K-major copy)."""
    return -1 if tensor.is_inference() else tensor._version


def _entries(table: WeakIdKeyDictionary, tensor: torch.Tensor) -> dict[Hashable, Any]:
    """The values derived so far from `tensor` as it is now (none after an in-place change)."""
    hit = table.get(tensor)
    if hit is None or hit[0] != _version(tensor):
        hit = (_version(tensor), {})
        table[tensor] = hit
    return hit[1]


def derived(table: WeakIdKeyDictionary, tensor: torch.Tensor, key: Hashable,
            make: Callable[[torch.Tensor], Any]) -> Any:
    """make(tensor), memoised in `table` per tensor (identity and version) and `key`."""
    entries = _entries(table, tensor)
    if key not in entries:
        entries[key] = make(tensor)
    return entries[key]


def read_once(table: WeakIdKeyDictionary, tensor: torch.Tensor, key: Hashable,
              make: Callable[[torch.Tensor], Any], capturing: Any) -> Any:
    """derived(table, tensor, key, make) for a `make` that reads the tensor's values on the host,
    which synchronises with the device: while a CUDA graph is being captured, where that is not
    allowed, a value not derived before is `capturing` (a caller's answer that is safe for any
    value), and nothing is kept."""
    if tensor.is_cuda and torch.cuda.is_current_stream_capturing():
        hit = table.get(tensor)
        if hit is None or hit[0] != _version(tensor) or key not in hit[1]:
            return capturing
    return derived(table, tensor, key, make)


# zero-point tensor -> whether every element is 0
_ZERO = derived_table()


def all_zero(t: torch.Tensor) -> bool:
    """Whether every element of `t` (an engine constant: a zero point) is 0, read once per tensor.

    The read synchronises with the device; while a CUDA graph is being captured, where that is
    not allowed, a tensor not read before counts as not all zero (the caller then keeps the
    general path, which is correct for any value)."""
    return read_once(_ZERO, t, "all zero", lambda x: not bool(torch.any(x.to(torch.float32) != 0)), False)

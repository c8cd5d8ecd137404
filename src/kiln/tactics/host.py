"""Host tactics: Shape and Size answered from the tensor's metadata, as host tensors.

On CUDA they let shape arithmetic stay on the host (see placement.py), so no step ever
waits for the GPU to hand back a shape.
"""
from __future__ import annotations

import torch

from kiln.tactics.registry import Tactic, TacticQuery, register_tactic


def _shape(data: torch.Tensor, *, end: int | None = None, start: int = 0) -> torch.Tensor:
    """Shape of `data` (dims[start:end]) as a host int64 tensor; same slicing as the reference op."""
    return torch.tensor(list(data.shape)[start:end], dtype=torch.int64)


def _size(data: torch.Tensor) -> torch.Tensor:
    """Number of elements of `data` as a host int64 scalar."""
    return torch.tensor(data.numel(), dtype=torch.int64)


def _any(_: TacticQuery) -> bool:
    return True


register_tactic(Tactic("Shape.host", "Shape", 1, ("cuda",), _shape, _any, placement="host"))
register_tactic(Tactic("Size.host", "Size", 1, ("cuda",), _size, _any, placement="host"))

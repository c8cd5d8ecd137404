"""Shapes with static and symbolic dimensions.

A Shape is a tuple whose entries are ints (static) or strings (symbolic, e.g. "batch").
None stands for a shape that is not known at all (unknown rank).
"""
from __future__ import annotations

from typing import Union

Dim = Union[int, str]
Shape = tuple[Dim, ...]


def is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        if not isinstance(d, int):
            raise ValueError(f"shape {format_shape(shape)} is not static")
        n *= d
    return n


def substitute(shape: Shape, symbols: dict[str, int]) -> Shape:
    """Replace symbolic dims by the values bound in `symbols` (unbound ones stay)."""
    return tuple(symbols.get(d, d) if isinstance(d, str) else d for d in shape)


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join(str(d) for d in shape) + "]"

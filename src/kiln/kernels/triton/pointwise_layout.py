"""The iteration space of a generated pointwise kernel: every operand's strides against the
broadcast shape, dims merged where all operands walk them contiguously (see pointwise.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Layout:
    """The merged iteration space and every operand's strides over it (inputs, then outputs)."""
    sizes: tuple[int, ...]                   # outer to inner, at least one dim
    strides: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    def kind(self, j: int) -> str:
        """"dense" (addressed by the flat index), "scalar" (one element) or "strided"."""
        st = self.strides[j]
        if not any(st):
            return "scalar"
        dense = [math.prod(self.sizes[d + 1:]) for d in range(len(self.sizes))]
        return "dense" if list(st) == dense else "strided"

    def wide(self) -> bool:
        """Whether an offset can pass int32 (then the kernel indexes in int64)."""
        reach = max(sum((n - 1) * s for n, s in zip(self.sizes, st)) for st in self.strides)
        return max(self.numel, reach) >= 2 ** 31


def broadcast_strides(shape: Sequence[int], strides: Sequence[int], space: Sequence[int]) -> tuple[int, ...]:
    """`strides` of a tensor of `shape` seen over `space` (right-aligned; 0 where it broadcasts)."""
    lead = len(space) - len(shape)
    return tuple(0 if d < lead or shape[d - lead] == 1 else strides[d - lead] for d in range(len(space)))


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.prod(shape[d + 1:]) for d in range(len(shape)))


def is_dense(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a tensor covers exactly prod(shape) elements in some dim order (no gaps, no overlap)."""
    dims = sorted((st, n) for n, st in zip(shape, strides) if n != 1)
    expect = 1
    for st, n in dims:
        if st != expect:
            return False
        expect *= n
    return True


def dim_order(space: Sequence[int], strides: Sequence[int]) -> list[int]:
    """The dims of `space` outer to inner as `strides` (an output's) walk them: a channels-last
    output makes C innermost, so its loads and stores merge into one contiguous dim again."""
    return sorted(range(len(space)), key=lambda d: -strides[d])


def collapse(space: Sequence[int], strides: Sequence[Sequence[int]], order: Sequence[int] | None = None) -> Layout:
    """Visit dims in `order`, drop size-1 dims and merge dim d into d+1 where every operand has
    st[d] = st[d+1] * n[d+1]."""
    keep = [d for d in (order if order is not None else range(len(space))) if space[d] != 1]
    sizes = [space[d] for d in keep]
    sts = [[st[d] for d in keep] for st in strides]
    d = len(sizes) - 2
    while d >= 0:
        if all(st[d] == st[d + 1] * sizes[d + 1] for st in sts):
            sizes[d] *= sizes[d + 1]
            del sizes[d + 1]
            for st in sts:
                st[d] = st[d + 1]
                del st[d + 1]
        d -= 1
    if not sizes:
        sizes, sts = [1], [[0] for _ in sts]
    return Layout(tuple(sizes), tuple(tuple(st) for st in sts))


def output_strides(space: Sequence[int], shapes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                   out_shape: Sequence[int]) -> tuple[int, ...]:
    """An output's strides: those of the first dense input of the output's full shape (as
    torch.empty_like keeps a memory format such as channels-last), else contiguous."""
    if tuple(out_shape) == tuple(space):
        for sh, st in zip(shapes, strides):
            if tuple(sh) == tuple(space) and is_dense(sh, st):
                return tuple(st)
    return contiguous_strides(out_shape)

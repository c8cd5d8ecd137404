"""Sequence and optional values: a sequence is a Python list of tensors, an absent optional
is None. These ops only move references; no tensor data is copied except by concatenation."""
from __future__ import annotations

from typing import Any, Callable

import torch

from kiln.kernels.reference.common import as_ints, as_scalar, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _position(n: int, position: Tensor | None, default: int, insert: bool = False) -> int:
    """A sequence position in [0, n) ([0, n] to insert), from a possibly negative index."""
    if position is None:
        return default
    p = int(as_scalar(position))
    if not -n <= p <= (n if insert else n - 1):
        raise IndexError(f"sequence position {p} is out of range for a sequence of {n}")
    return p + n if p < 0 else p


@reference_op("SequenceConstruct")
def sequence_construct(*inputs: Tensor) -> list[Tensor]:
    """A sequence of the input tensors, in order."""
    return list(inputs)


@reference_op("SequenceEmpty")
def sequence_empty(dtype: int = 1) -> list[Tensor]:
    """An empty sequence."""
    return []


@reference_op("SequenceLength")
def sequence_length(seq: list[Tensor]) -> Tensor:
    """The number of tensors in the sequence, as an int64 scalar."""
    return torch.tensor(len(seq), dtype=torch.int64)


@reference_op("SequenceAt")
def sequence_at(seq: list[Tensor], position: Tensor) -> Tensor:
    """The tensor at `position` (negative counts from the back)."""
    return seq[_position(len(seq), position, 0)]


@reference_op("SequenceInsert")
def sequence_insert(seq: list[Tensor], tensor: Tensor, position: Tensor | None = None) -> list[Tensor]:
    """A new sequence with `tensor` inserted at `position` (default: appended)."""
    out = list(seq)
    out.insert(_position(len(seq), position, len(seq), insert=True), tensor)
    return out


@reference_op("SequenceErase")
def sequence_erase(seq: list[Tensor], position: Tensor | None = None) -> list[Tensor]:
    """A new sequence without the tensor at `position` (default: the last)."""
    out = list(seq)
    del out[_position(len(seq), position, len(seq) - 1)]
    return out


@reference_op("ConcatFromSequence")
def concat_from_sequence(seq: list[Tensor], axis: int, new_axis: int = 0) -> Tensor:
    """Concatenate (new_axis=0) or stack (new_axis=1) the sequence's tensors along axis."""
    if new_axis:
        return torch.stack(seq, dim=norm_axis(axis, seq[0].dim() + 1))
    return torch.cat(seq, dim=norm_axis(axis, seq[0].dim()))


@reference_op("SplitToSequence")
def split_to_sequence(x: Tensor, split: Tensor | None = None, axis: int = 0, keepdims: int = 1) -> list[Tensor]:
    """Split x along axis into a sequence: into pieces of 1 (squeezed unless keepdims), equal
    pieces of a scalar split's size (the last may be shorter), or the listed lengths."""
    axis = norm_axis(axis, x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim=axis))
        return parts if keepdims else [p.squeeze(axis) for p in parts]
    sizes = as_ints(split)
    if split.dim() == 0:
        return list(torch.split(x, sizes[0], dim=axis))
    return list(torch.split(x, sizes, dim=axis))


@reference_op("SequenceMap")
def sequence_map(seq: list[Tensor], *additional: Any, body: Callable[..., list[Any]]) -> tuple[list[Tensor], ...]:
    """Apply body to each element of the input sequence(s); tensors among the additional
    inputs are passed whole to every call. Returns one sequence per body output."""
    columns: list[list[Any]] = []
    for i in range(len(seq)):
        args = [seq[i]] + [a[i] if isinstance(a, list) else a for a in additional]
        outs = body(*args)
        if not columns:
            columns = [[] for _ in outs]
        for col, o in zip(columns, outs):
            col.append(o)
    return tuple(columns) if columns else ([],)


@reference_op("Optional")
def optional(value: Any = None, type: Any = None) -> Any:  # noqa: A002 - the spec's name
    """An optional holding `value`, or an empty one."""
    return value


@reference_op("OptionalHasElement")
def optional_has_element(value: Any = None) -> Tensor:
    """Whether the optional holds a value, as a bool scalar."""
    return torch.tensor(value is not None)


@reference_op("OptionalGetElement")
def optional_get_element(value: Any) -> Any:
    """The value held by the optional (a tensor or sequence passes through)."""
    if value is None:
        raise ValueError("OptionalGetElement on an empty optional")
    return value

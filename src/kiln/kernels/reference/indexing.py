"""Indexing ops: Gather*, Scatter*, TensorScatter, OneHot, NonZero, ReverseSequence, Compress, Unique.

ONNX indices may be negative (counted from the end of the axis); every op normalises
them on the device with `_wrap` before handing them to torch.
"""
from __future__ import annotations

import math

import torch

from kiln.kernels.reference.common import as_scalar, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

# ONNX reduction name -> torch scatter_reduce name
_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(indices: Tensor, size: int | Tensor) -> Tensor:
    """Negative indices count from the end: i < 0 -> i + size (int64)."""
    idx = indices.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


@reference_op("Gather")
def gather(data: Tensor, indices: Tensor, *, axis: int = 0) -> Tensor:
    """Output = data indexed along `axis` by indices: shape data[:axis] + indices + data[axis+1:]."""
    ax = norm_axis(axis, data.dim())
    idx = _wrap(indices, data.shape[ax])
    out = data.index_select(ax, idx.reshape(-1))
    return out.reshape((*data.shape[:ax], *indices.shape, *data.shape[ax + 1:]))


@reference_op("GatherElements")
def gather_elements(data: Tensor, indices: Tensor, *, axis: int = 0) -> Tensor:
    """Output[i][j][k] = data[indices[i][j][k]][j][k] (for axis 0), shaped like indices."""
    ax = norm_axis(axis, data.dim())
    return torch.gather(data, ax, _wrap(indices, data.shape[ax]))


def _gather_nd_index(shape: tuple[int, ...], indices: Tensor) -> tuple[Tensor, ...]:
    """Split the index tuples [..., m] into m wrapped index tensors for advanced indexing."""
    return tuple(_wrap(indices[..., j], shape[j]) for j in range(indices.shape[-1]))


@reference_op("GatherND")
def gather_nd(data: Tensor, indices: Tensor, *, batch_dims: int = 0) -> Tensor:
    """Output = slices of data addressed by the index tuples in indices' last dim.

    The first batch_dims dims of data and indices are shared batch dims.
    """
    b = batch_dims
    batch = math.prod(data.shape[:b])
    inner = data.shape[b:]
    m = indices.shape[-1]
    d = data.reshape(batch, *inner)
    idx = indices.reshape(batch, -1, m)  # [B, L, m]
    bsel = torch.arange(batch, device=data.device).unsqueeze(1)  # [B, 1] broadcasts over L
    out = d[(bsel, *_gather_nd_index(inner, idx))]  # [B, L, *inner[m:]]
    return out.reshape(*indices.shape[:-1], *inner[m:])


def _check_reduction(reduction: str) -> None:
    if reduction != "none" and reduction not in _SCATTER_REDUCE:
        raise ValueError(f"scatter reduction must be none, add, mul, max or min; got {reduction!r}")


@reference_op("ScatterElements")
def scatter_elements(data: Tensor, indices: Tensor, updates: Tensor, *, axis: int = 0,
                     reduction: str = "none") -> Tensor:
    """Output = copy of data with updates written (or reduced in) at indices along `axis`."""
    _check_reduction(reduction)
    ax = norm_axis(axis, data.dim())
    idx = _wrap(indices, data.shape[ax])
    if reduction == "none":
        return data.scatter(ax, idx, updates)
    return data.scatter_reduce(ax, idx, updates, _SCATTER_REDUCE[reduction], include_self=True)


@reference_op("Scatter")
def scatter(data: Tensor, indices: Tensor, updates: Tensor, *, axis: int = 0) -> Tensor:
    """Output = copy of data with updates written at indices along `axis` (deprecated ScatterElements)."""
    return scatter_elements(data, indices, updates, axis=axis)


@reference_op("TensorScatter")
def tensor_scatter(past_cache: Tensor, update: Tensor, write_indices: Tensor | None = None, *,
                   mode: str = "linear", axis: int = -2) -> Tensor:
    """present_cache = past_cache with `update` written along `axis` from write_indices[batch] on.

    A KV-cache append: update differs from the cache only in the `axis` dim (the
    sequence). Each batch entry b writes at write_indices[b] + i (default 0); in
    "circular" mode that position wraps modulo the cache's length.
    """
    if mode not in ("linear", "circular"):
        raise ValueError(f"TensorScatter mode must be linear or circular; got {mode!r}")
    ax = norm_axis(axis, past_cache.dim())
    if ax == 0:
        raise ValueError("TensorScatter axis must not be the batch axis 0")
    size, steps = past_cache.shape[ax], update.shape[ax]
    start = (write_indices.to(torch.int64) if write_indices is not None
             else torch.zeros(past_cache.shape[0], dtype=torch.int64, device=past_cache.device))
    pos = start.reshape(-1, 1) + torch.arange(steps, device=past_cache.device)  # [B, steps]
    if mode == "circular":
        pos = pos.remainder(size)
    view = [1] * past_cache.dim()
    view[0], view[ax] = pos.shape[0], steps
    return past_cache.scatter(ax, pos.reshape(view).expand(update.shape), update.to(past_cache.dtype))


@reference_op("ScatterND")
def scatter_nd(data: Tensor, indices: Tensor, updates: Tensor, *, reduction: str = "none") -> Tensor:
    """Output = copy of data with update slices written (or reduced in) at the index tuples."""
    _check_reduction(reduction)
    m = indices.shape[-1]
    lead, rest = data.shape[:m], data.shape[m:]
    # Turn each index tuple into a row number of data viewed as [prod(lead), *rest].
    row = torch.zeros(indices.shape[:-1], dtype=torch.int64, device=data.device)
    for j, part in enumerate(_gather_nd_index(lead, indices)):
        row = row * lead[j] + part
    row = row.reshape(-1)
    out = data.clone().reshape(math.prod(lead), *rest)
    upd = updates.reshape(row.shape[0], *rest).to(data.dtype)
    if reduction == "none":
        out[row] = upd
    else:
        index = row.reshape(-1, *([1] * len(rest))).expand_as(upd)
        out.scatter_reduce_(0, index, upd, _SCATTER_REDUCE[reduction], include_self=True)
    return out.reshape(data.shape)


@reference_op("OneHot")
def one_hot(indices: Tensor, depth: Tensor, values: Tensor, *, axis: int = -1) -> Tensor:
    """Output = values[1] where the position along `axis` equals the index, else values[0].

    Negative indices count from depth; out-of-range indices give an all-off row.
    """
    n = int(as_scalar(depth))
    ax = norm_axis(axis, indices.dim() + 1)
    idx = _wrap(indices, n).unsqueeze(ax)
    view = [1] * (indices.dim() + 1)
    view[ax] = n
    hot = idx == torch.arange(n, device=indices.device).reshape(view)
    return torch.where(hot, values[1], values[0])


@reference_op("NonZero")
def non_zero(x: Tensor) -> Tensor:
    """Y = int64 [rank, count] coordinates of the non-zero elements, in row-major order."""
    return torch.nonzero(x).t().contiguous()


@reference_op("ReverseSequence")
def reverse_sequence(x: Tensor, sequence_lens: Tensor, *, batch_axis: int = 1,
                     time_axis: int = 0) -> Tensor:
    """Y = X with the first sequence_lens[b] steps along time_axis reversed, per batch b."""
    steps = x.shape[time_axis]
    t = torch.arange(steps, device=x.device).unsqueeze(0)  # [1, T]
    lens = sequence_lens.to(torch.int64).unsqueeze(1)  # [B, 1]
    src = torch.where(t < lens, lens - 1 - t, t)  # [B, T]: source time step
    if batch_axis > time_axis:
        src = src.t()
    view = [1] * x.dim()
    view[batch_axis], view[time_axis] = x.shape[batch_axis], steps
    return torch.gather(x, time_axis, src.reshape(view).expand(x.shape))


@reference_op("Compress")
def compress(x: Tensor, condition: Tensor, *, axis: int | None = None) -> Tensor:
    """Output = slices of input along `axis` (or of the flattened input) where condition is true."""
    keep = torch.nonzero(condition.to(torch.bool)).reshape(-1)
    if axis is None:
        return x.reshape(-1).index_select(0, keep)
    return x.index_select(norm_axis(axis, x.dim()), keep)


@reference_op("Unique")
def unique(x: Tensor, *, axis: int | None = None, sorted: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # noqa: A002
    """(Y, indices, inverse_indices, counts): the unique elements (or slices along axis) of X.

    `indices` are first occurrences; with sorted=0, Y is in order of first occurrence.
    """
    ax = None if axis is None else norm_axis(axis, x.dim())
    src = x.reshape(-1) if ax is None else x
    dim = 0 if ax is None else ax
    y, inverse, counts = torch.unique(src, sorted=True, return_inverse=True, return_counts=True, dim=dim)
    n = src.shape[dim]
    first = torch.full((counts.shape[0],), n, dtype=torch.int64, device=x.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=x.device), "amin")
    if not sorted:
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=x.device)
        y, counts, first, inverse = y.index_select(dim, order), counts[order], first[order], rank[inverse]
    return y, first, inverse, counts

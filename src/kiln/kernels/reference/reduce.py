"""Reductions (Reduce*, ArgMax/ArgMin), scans (CumSum), TopK and Einsum.

The Reduce* ops take the newest form: `axes` is an optional second input, and with
no axes they reduce everything unless `noop_with_empty_axes` makes them the identity.
Float reductions accumulate in float32 at least; integer sums stay integer.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from kiln.kernels.reference.common import (
    as_ints,
    as_scalar,
    compute_dtype,
    from_unsigned_ordered,
    is_wide_unsigned,
    norm_axes,
    norm_axis,
    unsigned_ordered,
)
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor
# (x in accumulation dtype, dims) -> reduced with keepdim=True
Reducer = Callable[[Tensor, list[int]], Tensor]


def _sum(x: Tensor, dims: list[int]) -> Tensor:
    return x.sum(dim=dims, keepdim=True) if dims else x.clone()


def _log_sum_exp(x: Tensor, dims: list[int]) -> Tensor:
    return torch.logsumexp(x, dim=dims, keepdim=True)


def _prod(x: Tensor, dims: list[int]) -> Tensor:
    for d in dims:  # torch.prod takes one dim at a time
        x = x.prod(dim=d, keepdim=True)
    return x


def _mean(x: Tensor, dims: list[int]) -> Tensor:
    if x.dtype.is_floating_point:
        return x.mean(dim=dims, keepdim=True)
    # Integer mean: numpy's float mean cast back (truncates toward zero).
    return x.to(torch.float64).mean(dim=dims, keepdim=True)


def _extreme(largest: bool) -> Reducer:
    """Max (or min) over `dims`; over an empty set it is the identity of the operation
    (-inf / the type's lowest value / False for max), as the onnx reference gives.
    uint16/32/64, which torch cannot compare, go through order-preserving int64 keys."""
    def run(x: Tensor, dims: list[int]) -> Tensor:
        if any(x.shape[d] == 0 for d in dims):
            shape = [1 if i in dims else n for i, n in enumerate(x.shape)]
            if x.dtype == torch.bool:
                fill: float | bool = not largest
            elif x.dtype.is_floating_point:
                fill = -math.inf if largest else math.inf
            else:
                info = torch.iinfo(x.dtype)
                fill = info.min if largest else info.max
            return torch.full(shape, fill, dtype=x.dtype, device=x.device)
        pick = torch.amax if largest else torch.amin
        return from_unsigned_ordered(pick(unsigned_ordered(x), dim=dims, keepdim=True), x.dtype)
    return run


def _as_float(x: Tensor) -> Tensor:
    # Integer L2 norms: numpy computes in float64 and the result is cast back.
    return x if x.is_floating_point() else x.to(torch.float64)


_REDUCERS: dict[str, tuple[Reducer, str]] = {
    "ReduceSum": (_sum, "sum"),
    "ReduceMean": (_mean, "mean"),
    "ReduceMax": (_extreme(largest=True), "maximum"),
    "ReduceMin": (_extreme(largest=False), "minimum"),
    "ReduceProd": (_prod, "product"),
    "ReduceL1": (lambda x, d: _sum(x.abs(), d), "sum of |x|"),
    "ReduceL2": (lambda x, d: torch.sqrt(_sum(_as_float(x) ** 2, d)), "sqrt of the sum of squares"),
    "ReduceLogSum": (lambda x, d: torch.log(_sum(x, d)), "log of the sum"),
    "ReduceLogSumExp": (_log_sum_exp, "log of the sum of exponentials"),
    "ReduceSumSquare": (lambda x, d: _sum(x * x, d), "sum of squares"),
}


def reduced_dims(data: Tensor, axes: Tensor | None, noop_with_empty_axes: int) -> list[int] | None:
    """The dims a Reduce* op reduces by the ONNX rules (all when no axes are given), sorted; None
    when it is the identity (no axes and noop_with_empty_axes)."""
    ax = as_ints(axes) or []
    if not ax and noop_with_empty_axes:
        return None
    return sorted(set(norm_axes(ax, data.dim()))) if ax else list(range(data.dim()))


def _reduce(reducer: Reducer, data: Tensor, axes: Tensor | None, keepdims: int,
            noop_with_empty_axes: int) -> Tensor:
    """Run `reducer` with the ONNX axes/keepdims/noop rules and return X's dtype."""
    dims = reduced_dims(data, axes, noop_with_empty_axes)
    if dims is None:
        return data
    x = data.to(compute_dtype(data.dtype)) if data.is_floating_point() else data
    y = reducer(x, dims)
    if not keepdims and dims:
        y = y.squeeze(dims)
    return y.to(data.dtype)


def _register_reductions() -> None:
    for op, (reducer, what) in _REDUCERS.items():
        def fn(data: Tensor, axes: Tensor | None = None, *, keepdims: int = 1,
               noop_with_empty_axes: int = 0, _r: Reducer = reducer) -> Tensor:
            return _reduce(_r, data, axes, keepdims, noop_with_empty_axes)
        fn.__doc__ = (f"Reduced = {what} of data over `axes` (all axes if none), "
                      "keeping reduced dims if keepdims.")
        fn.__name__ = fn.__qualname__ = op
        reference_op(op)(fn)


_register_reductions()


def _arg(x: Tensor, axis: int, keepdims: int, select_last_index: int, largest: bool) -> Tensor:
    axis = norm_axis(axis, x.dim())
    pick = torch.argmax if largest else torch.argmin
    if select_last_index:
        # Flip so that "first" becomes "last", then map the index back.
        idx = x.shape[axis] - 1 - pick(x.flip(axis), dim=axis, keepdim=True)
    else:
        idx = pick(x, dim=axis, keepdim=True)
    return idx if keepdims else idx.squeeze(axis)


@reference_op("ArgMax")
def arg_max(data: Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> Tensor:
    """Reduced = int64 index of the maximum along `axis` (first, or last if select_last_index)."""
    return _arg(data, axis, keepdims, select_last_index, largest=True)


@reference_op("ArgMin")
def arg_min(data: Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> Tensor:
    """Reduced = int64 index of the minimum along `axis` (first, or last if select_last_index)."""
    return _arg(data, axis, keepdims, select_last_index, largest=False)


@reference_op("CumSum")
def cum_sum(x: Tensor, axis: Tensor, *, exclusive: int = 0, reverse: int = 0) -> Tensor:
    """Y = running sum of X along `axis`, optionally exclusive and/or from the end."""
    ax = norm_axis(int(as_scalar(axis)), x.dim())
    if reverse:
        x = x.flip(ax)
    if exclusive and x.shape[ax] > 0:
        # Exclusive = inclusive sum of X shifted by one along the axis, zero first.
        zero = torch.zeros_like(x.narrow(ax, 0, 1))
        x = torch.cat([zero, x.narrow(ax, 0, x.shape[ax] - 1)], dim=ax)
    y = torch.cumsum(x, dim=ax, dtype=x.dtype)
    return y.flip(ax) if reverse else y


@reference_op("TopK")
def top_k(x: Tensor, k: Tensor, *, axis: int = -1, largest: int = 1, sorted: int = 1) -> tuple[Tensor, Tensor]:  # noqa: A002
    """(Values, Indices) of the K largest (or smallest) elements along `axis`.

    Ties go to the lower index, as the spec asks; a stable sort guarantees that
    (torch.topk does not). Output is sorted even when sorted=0, which the spec allows.
    """
    ax = norm_axis(axis, x.dim())
    kk = int(as_scalar(k))
    if is_wide_unsigned(x):  # torch sorts no uint16/32/64 on CUDA: sort an order-preserving int64
        values, indices = torch.sort(unsigned_ordered(x), dim=ax, descending=bool(largest), stable=True)
        return from_unsigned_ordered(values.narrow(ax, 0, kk), x.dtype), indices.narrow(ax, 0, kk)
    values, indices = torch.sort(x, dim=ax, descending=bool(largest), stable=True)
    return values.narrow(ax, 0, kk), indices.narrow(ax, 0, kk)


@reference_op("Einsum")
def einsum(*inputs: Tensor, equation: str) -> Tensor:
    """Output = Einstein summation of the inputs by `equation` (numpy einsum syntax)."""
    return torch.einsum(equation, *inputs)

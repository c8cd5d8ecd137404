"""Shape and layout ops: Shape, Size, Reshape, Transpose, (Un)Squeeze, Concat, Split,
Slice, Expand, Tile, Pad, CenterCropPad, ConstantOfShape, Range, Trilu, EyeLike.

Shape-defining inputs (Reshape's `shape`, Slice's `starts` ...) are read to the host:
they decide output shapes. Results may be views of the inputs (Reshape, Transpose,
Squeeze, Expand ...), as in torch; callers must not write into them in place.
Gather/Scatter-like ops live in indexing.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from kiln.ir.dtypes import from_numpy, onnx_to_torch
from kiln.kernels.reference.common import as_ints, as_scalar, norm_axes, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _shape_tensor(values: Sequence[int], like: Tensor) -> Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=like.device)


@reference_op("Shape")
def shape(data: Tensor, *, end: int | None = None, start: int = 0) -> Tensor:
    """Shape = int64 1-D tensor of data's dims[start:end] (negative bounds count from the end)."""
    return _shape_tensor(list(data.shape)[start:end], data)


@reference_op("Size")
def size(data: Tensor) -> Tensor:
    """Size = int64 scalar number of elements of data."""
    return torch.tensor(data.numel(), dtype=torch.int64, device=data.device)


@reference_op("Reshape")
def reshape(data: Tensor, shape: Tensor, *, allowzero: int = 0) -> Tensor:
    """Reshaped = data with dims `shape`: -1 is inferred, 0 copies data's dim unless allowzero."""
    dims = as_ints(shape)
    if not allowzero:
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


@reference_op("Transpose")
def transpose(data: Tensor, *, perm: Sequence[int] | None = None) -> Tensor:
    """Transposed = data with axes permuted by `perm` (default: reversed)."""
    p = list(perm) if perm is not None else list(reversed(range(data.dim())))
    return data.permute(*p)


@reference_op("Squeeze")
def squeeze(data: Tensor, axes: Tensor | None = None) -> Tensor:
    """Squeezed = data without the size-1 dims listed in `axes` (all size-1 dims if none)."""
    if axes is None:
        return data.reshape([d for d in data.shape if d != 1])
    dims = norm_axes(as_ints(axes), data.dim())
    for d in dims:
        if data.shape[d] != 1:
            raise ValueError(f"Squeeze axis {d} has size {data.shape[d]}, not 1 (shape {tuple(data.shape)})")
    return data.reshape([s for i, s in enumerate(data.shape) if i not in dims])


@reference_op("Unsqueeze")
def unsqueeze(data: Tensor, axes: Tensor) -> Tensor:
    """Expanded = data with size-1 dims inserted at `axes` (positions in the output)."""
    axes_list = as_ints(axes)
    out_rank = data.dim() + len(axes_list)
    dims = set(norm_axes(axes_list, out_rank))
    if len(dims) != len(axes_list):
        raise ValueError(f"Unsqueeze axes {axes_list} repeat an axis of the rank-{out_rank} output")
    it = iter(data.shape)
    return data.reshape([1 if i in dims else next(it) for i in range(out_rank)])


@reference_op("Concat")
def concat(*inputs: Tensor, axis: int) -> Tensor:
    """Concat_result = inputs joined along `axis`."""
    return torch.cat(inputs, dim=norm_axis(axis, inputs[0].dim()))


@reference_op("Split")
def split(x: Tensor, split: Tensor | None = None, *, axis: int = 0,
          num_outputs: int | None = None) -> tuple[Tensor, ...]:
    """Outputs = X cut along `axis` into pieces of sizes `split`, or into num_outputs pieces.

    With num_outputs the pieces have size ceil(dim / num_outputs), the last one
    smaller. Limitation: a function cannot see how many outputs its node has, so one
    of `split` or `num_outputs` is required (the importer supplies num_outputs for
    older opsets that left both out).
    """
    ax = norm_axis(axis, x.dim())
    n = x.shape[ax]
    if split is not None:
        sizes = as_ints(split)
    elif num_outputs is not None:
        chunk = -(-n // num_outputs)
        sizes = [min(chunk, max(n - i * chunk, 0)) for i in range(num_outputs)]
    else:
        raise ValueError("Split needs the `split` input or the `num_outputs` attribute; "
                         "the importer should set num_outputs from the node's output count")
    if sum(sizes) != n:
        raise ValueError(f"Split sizes {sizes} do not add up to dim {n} of axis {ax}")
    return tuple(torch.split(x, sizes, dim=ax))


def _slice_axis(x: Tensor, axis: int, start: int, end: int, step: int) -> Tensor:
    """x[start:end:step] along `axis` with ONNX clamping; negative steps allowed."""
    n = x.shape[axis]
    if step == 0:
        raise ValueError("Slice step must not be 0")
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
        return x[(slice(None),) * axis + (slice(start, end, step),)]
    start, end = min(max(start, -1), n - 1), min(max(end, -1), n - 1)
    length = max(0, -(-(start - end) // -step))
    # torch slicing has no negative steps: gather the indices instead.
    return x.index_select(axis, start + step * torch.arange(length, device=x.device))


@reference_op("Slice")
def slice_(data: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None,
           steps: Tensor | None = None) -> Tensor:
    """Output = data[starts:ends:steps] on `axes`, bounds clamped as the spec says."""
    st, en = as_ints(starts), as_ints(ends)
    ax = norm_axes(as_ints(axes), data.dim()) if axes is not None else list(range(len(st)))
    sp = as_ints(steps) if steps is not None else [1] * len(st)
    for a, s, e, p in zip(ax, st, en, sp):
        data = _slice_axis(data, a, s, e, p)
    return data


@reference_op("Expand")
def expand(x: Tensor, shape: Tensor) -> Tensor:
    """Output = input broadcast with `shape` (numpy rules; either side may be 1)."""
    out = torch.broadcast_shapes(tuple(x.shape), tuple(as_ints(shape)))
    return x.expand(out)


@reference_op("Tile")
def tile(x: Tensor, repeats: Tensor) -> Tensor:
    """Output = input repeated `repeats[i]` times along each axis i."""
    return x.repeat(as_ints(repeats)) if x.dim() else x.clone()


def _pad_indices(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source index for each output position of one padded axis (n >= 1)."""
    idx = torch.arange(-before, n + after, device=device)
    if mode == "edge":
        return idx.clamp(0, n - 1)
    if mode == "wrap":
        return idx.remainder(n)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(idx)
        period = 2 * (n - 1)  # mirror without repeating the edge: a triangle wave
        m = idx.remainder(period)
        return torch.where(m >= n, period - m, m)
    return idx.clamp(0, n - 1)  # constant: positions outside are masked by the caller


@reference_op("Pad")
def pad(data: Tensor, pads: Tensor, constant_value: Tensor | None = None, axes: Tensor | None = None, *,
        mode: str = "constant") -> Tensor:
    """Output = data padded (or cropped, for negative pads) per axis; modes constant/reflect/edge/wrap."""
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"Pad mode must be constant, reflect, edge or wrap; got {mode!r}")
    p = as_ints(pads)
    ax = norm_axes(as_ints(axes), data.dim()) if axes is not None else list(range(data.dim()))
    if len(p) != 2 * len(ax):
        raise ValueError(f"Pad got {len(p)} pads for {len(ax)} axes; need two per axis")
    out = data
    for i, a in enumerate(ax):
        before, after = p[i], p[i + len(ax)]
        # Crop first (negative pads), then pad what remains by gathering source indices.
        lo, hi = max(-before, 0), max(-after, 0)
        out = out.narrow(a, lo, out.shape[a] - lo - hi)
        before, after = max(before, 0), max(after, 0)
        if before == after == 0:
            continue
        n = out.shape[a]
        if n == 0 and mode != "constant":
            raise ValueError(f"Pad mode {mode} cannot pad axis {a} of size 0")
        idx = _pad_indices(max(n, 1), before, after, mode, data.device)
        if n == 0:
            shape = list(out.shape)
            shape[a] = before + after
            out = torch.zeros(shape, dtype=out.dtype, device=out.device)
        else:
            out = out.index_select(a, idx)
        if mode == "constant":
            inside = torch.zeros(n + before + after, dtype=torch.bool, device=data.device)
            inside[before:before + n] = True
            view = [1] * out.dim()
            view[a] = -1
            fill = (constant_value.reshape(()).to(out.dtype) if constant_value is not None
                    else torch.zeros((), dtype=out.dtype, device=out.device))
            out = torch.where(inside.reshape(view), out, fill)
    return out


@reference_op("CenterCropPad")
def center_crop_pad(x: Tensor, shape: Tensor, *, axes: Sequence[int] | None = None) -> Tensor:
    """Output = input center-cropped or zero-padded to `shape` on `axes` (default all).

    An odd difference puts the extra row at the end: a crop starts at floor(d/2) and a
    pad adds floor(d/2) before.
    """
    target = as_ints(shape)
    ax = norm_axes(axes, x.dim()) if axes is not None else list(range(x.dim()))
    if len(target) != len(ax):
        raise ValueError(f"CenterCropPad got shape {target} for {len(ax)} axes; need one size per axis")
    out_shape, dst = list(x.shape), [slice(None)] * x.dim()
    for a, size in zip(ax, target):
        n = x.shape[a]
        if size < n:
            x = x.narrow(a, (n - size) // 2, size)
        elif size > n:
            dst[a] = slice((size - n) // 2, (size - n) // 2 + n)
        out_shape[a] = size
    out = torch.zeros(out_shape, dtype=x.dtype, device=x.device)
    out[tuple(dst)] = x
    return out


@reference_op("ConstantOfShape")
def constant_of_shape(x: Tensor, *, value: np.ndarray | None = None) -> Tensor:
    """Output = tensor of shape `input` filled with `value` (default float32 zero)."""
    dims = as_ints(x)
    if value is None:
        return torch.zeros(dims, dtype=torch.float32, device=x.device)
    arr = np.asarray(value).reshape(-1)
    return torch.full(dims, arr[0].item(), dtype=from_numpy(arr.dtype).torch, device=x.device)


@reference_op("Range")
def range_(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    """Output = [start, start + delta, ...) up to limit, in start's dtype."""
    s, lim, d = as_scalar(start), as_scalar(limit), as_scalar(delta)
    if d == 0:
        raise ValueError("Range delta must not be 0")
    count = max(int(np.ceil((lim - s) / d)), 0)
    # start + i * delta in the input dtype, as the spec's loop computes it.
    steps = torch.arange(count, device=start.device).to(start.dtype)
    return start.reshape(()) + steps * delta.reshape(())


@reference_op("Trilu")
def trilu(x: Tensor, k: Tensor | None = None, *, upper: int = 1) -> Tensor:
    """Output = upper (upper=1) or lower triangle of the last two dims, shifted by diagonal k."""
    kk = int(as_scalar(k)) if k is not None else 0
    return torch.triu(x, kk) if upper else torch.tril(x, kk)


@reference_op("EyeLike")
def eye_like(x: Tensor, *, dtype: int | None = None, k: int = 0) -> Tensor:
    """Output = 2-D tensor shaped like input with ones on diagonal k, zeros elsewhere."""
    out_dtype = onnx_to_torch(dtype) if dtype is not None else x.dtype
    rows, cols = x.shape
    r = torch.arange(rows, device=x.device).unsqueeze(1)
    c = torch.arange(cols, device=x.device).unsqueeze(0)
    return (c - r == k).to(out_dtype)

"""Pooling: MaxPool, AveragePool, LpPool and their global forms, for 1-3 spatial dims.

Design note: every windowed pool goes through one routine, `_windows`, which pads the
input explicitly and unfolds each spatial axis into a window axis, giving
[N, C, *out, *kernel]. A pool is then a reduction over the trailing kernel axes.
This handles what torch's pooling functions cannot express: asymmetric and large
padding, SAME_* auto padding with dilation, ceil mode, and exact divisors for
count_include_pad, with one code path.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kiln.kernels.reference.common import (
    FLOAT8_TYPES,
    compute_dtype,
    pool_output_size,
    resolve_pads,
    spatial_attrs,
    to_torch_pad,
)
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def pool_geometry(x: Tensor, auto_pad: str, ceil_mode: int, dilations: Sequence[int] | None,
              kernel_shape: Sequence[int], pads: Sequence[int] | None,
              strides: Sequence[int] | None) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, explicit pads, output spatial shape) of a pool."""
    n = x.dim() - 2
    if n < 1:
        raise ValueError(f"pooling needs input [N, C, *spatial]; got shape {tuple(x.shape)}")
    k, s, d = spatial_attrs(n, kernel_shape, strides, dilations)
    p = resolve_pads(auto_pad, x.shape[2:], k, s, d, pads)
    out = [pool_output_size(x.shape[2 + i], k[i], s[i], d[i], p[i], p[n + i], ceil_mode)
           for i in range(n)]
    return k, s, d, p, out


def _windows(x: Tensor, k: list[int], s: list[int], d: list[int], p: list[int], out: list[int],
             fill: float | int) -> Tensor:
    """X [N, C, *D] -> windows [N, C, *out, prod(k)], positions outside X set to `fill`.

    The end padding is adjusted to exactly what `out` windows need (more than `pads`
    in ceil mode, possibly less when the last pads are never reached).
    """
    n = len(k)
    spans = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    ends = [(out[i] - 1) * s[i] + spans[i] - x.shape[2 + i] - p[i] for i in range(n)]
    x = F.pad(x, to_torch_pad(p[:n] + ends), value=fill)
    for i in range(n):
        # unfold appends the window axis at the end; `::d` keeps the dilated taps.
        x = x.unfold(2 + i, spans[i], s[i])[..., :: d[i]]
    return x.reshape(*x.shape[: 2 + n], -1)


def lowest_value(dtype: torch.dtype) -> float | int:
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


@reference_op("MaxPool")
def max_pool(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Sequence[int] | None = None, kernel_shape: Sequence[int],
             pads: Sequence[int] | None = None, storage_order: int = 0,
             strides: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """(Y, Indices): the maximum of each window, and its flat index into X.

    Indices count over the whole tensor (batch and channel included) as the spec
    says; storage_order=1 numbers the spatial positions column-major. The result
    always has both tensors: the executor ignores Indices when the node lacks it.
    float8 X (a quantized activation) is pooled in float32: the maximum is one of the inputs,
    so the result converts back exactly (torch has no float8 max).
    """
    if x.dtype in FLOAT8_TYPES:
        y, indices = max_pool(x.float(), auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides)
        return y.to(x.dtype), indices
    k, s, d, p, out = pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    win = _windows(x, k, s, d, p, out, lowest_value(x.dtype))
    y, arg = torch.max(win, dim=-1)  # first maximum in row-major window order, as ONNX
    # Run the same windows over a tensor of flat positions to turn `arg` into indices.
    spatial = x.shape[2:]
    pos = torch.arange(x.numel(), device=x.device, dtype=torch.int64).reshape(x.shape)
    if storage_order:
        base = pos - pos % spatial.numel()
        col = torch.arange(spatial.numel(), device=x.device, dtype=torch.int64)
        col = col.reshape(tuple(reversed(spatial))).permute(*reversed(range(len(spatial))))
        pos = base + col
    pos_win = _windows(pos, k, s, d, p, out, -1)
    return y, torch.gather(pos_win, -1, arg.unsqueeze(-1)).squeeze(-1)


@reference_op("AveragePool")
def average_pool(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: Sequence[int] | None = None,
                 kernel_shape: Sequence[int], pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> Tensor:
    """Y = mean of each window; padding counts in the divisor only if count_include_pad.

    Positions added by ceil mode beyond the explicit padding never count (as in
    PyTorch and ONNX Runtime).
    """
    k, s, d, p, out = pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    acc = compute_dtype(x.dtype)
    total = _windows(x.to(acc), k, s, d, p, out, 0).sum(-1)
    # The divisor is the same windowing applied to a mask of the positions that count.
    n = len(k)
    mask = torch.ones((1, 1, *x.shape[2:]), device=x.device, dtype=acc)
    if count_include_pad:
        mask = F.pad(mask, to_torch_pad(p), value=1.0)
        p = [0] * (2 * n)
    count = _windows(mask, k, s, d, p, out, 0).sum(-1)
    return (total / count).to(x.dtype)


@reference_op("LpPool")
def lp_pool(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
            dilations: Sequence[int] | None = None, kernel_shape: Sequence[int], p: int = 2,
            pads: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> Tensor:
    """Y = (sum over each window of |X|**p) ** (1/p), padding contributing zero."""
    k, s, d, pd, out = pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    acc = compute_dtype(x.dtype)
    win = _windows(x.to(acc).abs() ** p, k, s, d, pd, out, 0)
    return (win.sum(-1) ** (1.0 / p)).to(x.dtype)


def _spatial_dims(x: Tensor) -> list[int]:
    return list(range(2, x.dim()))


@reference_op("GlobalAveragePool")
def global_average_pool(x: Tensor) -> Tensor:
    """Y [N, C, 1, ...] = mean of X over all spatial dims, accumulated in the compute type
    (read from X as it is: no widened copy of X, whatever its memory format)."""
    return x.mean(dim=_spatial_dims(x), keepdim=True, dtype=compute_dtype(x.dtype)).to(x.dtype)


@reference_op("GlobalMaxPool")
def global_max_pool(x: Tensor) -> Tensor:
    """Y [N, C, 1, ...] = maximum of X over all spatial dims."""
    return torch.amax(x, dim=_spatial_dims(x), keepdim=True)


@reference_op("GlobalLpPool")
def global_lp_pool(x: Tensor, *, p: int = 2) -> Tensor:
    """Y [N, C, 1, ...] = (sum of |X|**p over all spatial dims) ** (1/p)."""
    xa = x.to(compute_dtype(x.dtype)).abs() ** p
    return (xa.sum(dim=_spatial_dims(x), keepdim=True) ** (1.0 / p)).to(x.dtype)

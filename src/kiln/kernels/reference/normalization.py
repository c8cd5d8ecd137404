"""Normalisation layers: Batch/Instance/Layer/Group/RMS/Lp/MeanVariance normalisation, LRN.

Statistics are computed in float32 at least (ONNX's `stash_type=1`), so fp16/bf16
inputs get the accurate answer an oracle should give; results return in X's dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.common import compute_dtype, norm_axes, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _channel_view(t: Tensor, rank: int) -> Tensor:
    """A per-channel vector [C] shaped [1, C, 1, ...] to broadcast against [N, C, *D]."""
    return t.reshape([1, -1] + [1] * (rank - 2))


def _stash(x: Tensor, stash_type: int) -> torch.dtype:
    """Dtype for statistics: the stash type, widened to X's dtype if X is wider."""
    stash = onnx_to_torch(stash_type)
    return torch.float64 if torch.float64 in (x.dtype, stash) else stash


@reference_op("BatchNormalization")
def batch_normalization(x: Tensor, scale: Tensor, b: Tensor, input_mean: Tensor, input_var: Tensor, *,
                        epsilon: float = 1e-5, momentum: float = 0.9,
                        training_mode: int = 0) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Y = (X - mean) / sqrt(var + epsilon) * scale + B, per channel of X [N, C, *D].

    With training_mode=1 the batch's own statistics are used and the updated
    (running_mean, running_var) = old * momentum + batch * (1 - momentum) are returned too.
    """
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    if training_mode:
        dims = [0] + list(range(2, x.dim()))
        mean = xa.mean(dim=dims)
        var = xa.var(dim=dims, unbiased=False)
    else:
        mean, var = input_mean.to(acc), input_var.to(acc)
    inv = torch.rsqrt(var + epsilon)
    y = (xa - _channel_view(mean, x.dim())) * _channel_view(inv * scale.to(acc), x.dim())
    y = (y + _channel_view(b.to(acc), x.dim())).to(x.dtype)
    if not training_mode:
        return y
    running_mean = input_mean * momentum + mean.to(input_mean.dtype) * (1 - momentum)
    running_var = input_var * momentum + var.to(input_var.dtype) * (1 - momentum)
    return y, running_mean, running_var


@reference_op("InstanceNormalization")
def instance_normalization(x: Tensor, scale: Tensor, b: Tensor, *, epsilon: float = 1e-5) -> Tensor:
    """Y = (X - mean) / sqrt(var + epsilon) * scale + B, statistics per (n, c) over space."""
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    dims = list(range(2, x.dim()))
    mean = xa.mean(dim=dims, keepdim=True)
    var = xa.var(dim=dims, keepdim=True, unbiased=False)
    y = (xa - mean) * torch.rsqrt(var + epsilon)
    return (y * _channel_view(scale.to(acc), x.dim()) + _channel_view(b.to(acc), x.dim())).to(x.dtype)


@reference_op("LayerNormalization")
def layer_normalization(x: Tensor, scale: Tensor, b: Tensor | None = None, *, axis: int = -1,
                        epsilon: float = 1e-5, stash_type: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """(Y, Mean, InvStdDev): X normalised over dims [axis, rank), times Scale plus B.

    Mean and InvStdDev have shape X.shape[:axis] + [1, ...] and the stash type.
    """
    axis = norm_axis(axis, x.dim())
    acc = _stash(x, stash_type)
    xa = x.to(acc)
    dims = list(range(axis, x.dim()))
    mean = xa.mean(dim=dims, keepdim=True)
    var = ((xa - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + epsilon)
    y = (xa - mean) * inv * scale.to(acc)
    if b is not None:
        y = y + b.to(acc)
    stash = onnx_to_torch(stash_type)
    return y.to(x.dtype), mean.to(stash), inv.to(stash)


@reference_op("GroupNormalization")
def group_normalization(x: Tensor, scale: Tensor, bias: Tensor, *, epsilon: float = 1e-5,
                        num_groups: int, stash_type: int = 1) -> Tensor:
    """Y = X normalised per (n, group of C/num_groups channels), times per-channel scale plus bias."""
    acc = _stash(x, stash_type)
    n, c = x.shape[:2]
    g = x.to(acc).reshape(n, num_groups, -1)
    mean = g.mean(dim=-1, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=-1, keepdim=True)
    y = ((g - mean) * torch.rsqrt(var + epsilon)).reshape(x.shape)
    y = y * _channel_view(scale.to(acc), x.dim()) + _channel_view(bias.to(acc), x.dim())
    return y.to(x.dtype)


@reference_op("RMSNormalization", since=23)
def rms_normalization(x: Tensor, scale: Tensor, *, axis: int = -1, epsilon: float = 1e-5,
                      stash_type: int = 1) -> Tensor:
    """Y = X / sqrt(mean(X**2 over dims [axis, rank)) + epsilon) * scale."""
    axis = norm_axis(axis, x.dim())
    acc = _stash(x, stash_type)
    xa = x.to(acc)
    ms = (xa * xa).mean(dim=list(range(axis, x.dim())), keepdim=True)
    return (xa * torch.rsqrt(ms + epsilon) * scale.to(acc)).to(x.dtype)


@reference_op("LpNormalization")
def lp_normalization(x: Tensor, *, axis: int = -1, p: int = 2) -> Tensor:
    """Y = X / ||X||_p along `axis` (p is 1 or 2); a zero norm gives 0."""
    if p not in (1, 2):
        raise ValueError(f"LpNormalization p must be 1 or 2, got {p}")
    axis = norm_axis(axis, x.dim())
    norm = torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@reference_op("MeanVarianceNormalization")
def mean_variance_normalization(x: Tensor, *, axes: Sequence[int] = (0, 2, 3)) -> Tensor:
    """Y = (X - E[X]) / (sqrt(E[X**2] - E[X]**2) + 1e-9), moments over `axes`."""
    dims = norm_axes(axes, x.dim())
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    mean = xa.mean(dim=dims, keepdim=True)
    var = (xa * xa).mean(dim=dims, keepdim=True) - mean * mean
    return ((xa - mean) / (torch.sqrt(var) + 1e-9)).to(x.dtype)


@reference_op("LRN")
def lrn(x: Tensor, *, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0, size: int) -> Tensor:
    """Y = X / (bias + alpha / size * sum of X**2 over `size` neighbouring channels) ** beta.

    The window for channel c spans [c - floor((size-1)/2), c + ceil((size-1)/2)].
    """
    acc = compute_dtype(x.dtype)
    sq = x.to(acc) ** 2  # [N, C, *D]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    # Pad the channel axis and sum `size` shifted copies: clear and exact.
    pad = [0, 0] * (x.dim() - 2) + [lo, hi]
    padded = F.pad(sq, pad)
    c = x.shape[1]
    total = sum(padded[:, i:i + c] for i in range(size))
    return (x.to(acc) / (bias + alpha / size * total) ** beta).to(x.dtype)


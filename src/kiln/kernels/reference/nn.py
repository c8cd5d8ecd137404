"""Neural-network layers: Conv, ConvTranspose, Gemm, MatMul, Det, the softmax family and
the layout ops Flatten, DepthToSpace, SpaceToDepth.

Pooling lives in pooling.py, normalisation layers in normalization.py.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kiln.kernels.reference.common import norm_axis, resolve_pads, spatial_attrs, to_torch_pad
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _spatial_rank(x: Tensor) -> int:
    rank = x.dim() - 2
    if rank not in _CONV:
        raise ValueError(f"Conv/ConvTranspose support 1-3 spatial dims; got input of shape {tuple(x.shape)}")
    return rank


@reference_op("Conv")
def conv(x: Tensor, w: Tensor, b: Tensor | None = None, *, auto_pad: str = "NOTSET",
         dilations: Sequence[int] | None = None, group: int = 1,
         kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
         strides: Sequence[int] | None = None) -> Tensor:
    """Y = cross-correlation of X [N, C, *D] with W [M, C/group, *K] plus B, ONNX padding."""
    n = _spatial_rank(x)
    k, s, d = spatial_attrs(n, kernel_shape or w.shape[2:], strides, dilations)
    p = resolve_pads(auto_pad, x.shape[2:], k, s, d, pads)
    # Explicit F.pad first: ONNX pads may be asymmetric, torch's `padding=` may not.
    if any(p):
        x = F.pad(x, to_torch_pad(p))
    return _CONV[n](x, w, b, stride=s, dilation=d, groups=group)


def _conv_transpose_pads(x: Tensor, k: list[int], s: list[int], d: list[int], out_pad: list[int],
                         auto_pad: str, pads: Sequence[int] | None,
                         output_shape: Sequence[int] | None) -> list[int]:
    """The pads ConvTranspose crops from its full output, per the ONNX formulas.

    full = stride * (in - 1) + output_padding + (k - 1) * dilation + 1. Given an
    output_shape (or SAME_*, whose output is in * stride) the crop is full - out, with
    the odd element at the end for SAME_UPPER and at the beginning otherwise.
    """
    n = len(k)
    if pads is not None and auto_pad in ("NOTSET", "") and output_shape is None:
        return [int(v) for v in pads]
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x.shape[2 + i] * s[i] for i in range(n)]
    if output_shape is None:
        return [0] * (2 * n)
    out = list(output_shape)[-n:]  # some exporters give [N, C, *spatial]
    begin, end = [], []
    for i in range(n):
        total = s[i] * (x.shape[2 + i] - 1) + out_pad[i] + (k[i] - 1) * d[i] + 1 - out[i]
        if auto_pad == "SAME_UPPER":
            begin.append(total // 2)
            end.append(total - total // 2)
        else:
            begin.append(total - total // 2)
            end.append(total // 2)
    return begin + end


@reference_op("ConvTranspose")
def conv_transpose(x: Tensor, w: Tensor, b: Tensor | None = None, *, auto_pad: str = "NOTSET",
                   dilations: Sequence[int] | None = None, group: int = 1,
                   kernel_shape: Sequence[int] | None = None,
                   output_padding: Sequence[int] | None = None,
                   output_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                   strides: Sequence[int] | None = None) -> Tensor:
    """Y = transposed convolution of X [N, C, *D] with W [C, M/group, *K] plus B."""
    n = _spatial_rank(x)
    k, s, d = spatial_attrs(n, kernel_shape or w.shape[2:], strides, dilations)
    out_pad = [int(v) for v in output_padding] if output_padding else [0] * n
    p = _conv_transpose_pads(x, k, s, d, out_pad, auto_pad, pads, output_shape)
    # Full (uncropped) output, then output_padding zeros at the end, then crop `p`
    # (F.pad with negative amounts crops; a negative crop pads zeros).
    y = _CONV_T[n](x, w, None, stride=s, dilation=d, groups=group)
    y = F.pad(y, to_torch_pad([0] * n + out_pad))
    y = F.pad(y, to_torch_pad([-v for v in p]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


@reference_op("Gemm")
def gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Tensor:  # noqa: N803 (ONNX attribute names)
    """Y = alpha * A' @ B' + beta * C, A' and B' optionally transposed, C broadcast."""
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y.to(a.dtype)


@reference_op("MatMul")
def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Y = A @ B with numpy semantics (batch broadcasting, 1-D operands promoted)."""
    if a.dtype.is_floating_point or a.device.type == "cpu":
        return torch.matmul(a, b)
    # CUDA has no integer GEMM: multiply and sum exactly instead (integer MatMuls are
    # small shape computations in practice). 1-D operands are promoted as numpy does.
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    y = (a2.unsqueeze(-1) * b2.unsqueeze(-3)).sum(dim=-2, dtype=a.dtype)  # [..., M, K, N] -> [..., M, N]
    if a.dim() == 1:
        y = y.squeeze(-2)
    if b.dim() == 1:
        y = y.squeeze(-1)
    return y


@reference_op("Det")
def det(x: Tensor) -> Tensor:
    """Y = determinant of each square matrix in the last two dims of X [*, M, M]."""
    # LU in float64: exact enough for an oracle, and torch has no half-precision det.
    return torch.linalg.det(x.to(torch.float64)).to(x.dtype)


def _coerced(x: Tensor, axis: int, coerce_2d: int,
             fn: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Apply `fn(x, axis)`; with coerce_2d (opset < 13) over X flattened to 2-D at `axis`."""
    axis = norm_axis(axis, x.dim())
    if not coerce_2d:
        return fn(x, axis)
    rows = 1
    for v in x.shape[:axis]:
        rows *= v
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


def _softmax(x: Tensor, axis: int) -> Tensor:
    return torch.softmax(x, dim=axis)


def _log_softmax(x: Tensor, axis: int) -> Tensor:
    return torch.log_softmax(x, dim=axis)


def _hardmax(x: Tensor, axis: int) -> Tensor:
    # argmax returns the first maximum, which is the one ONNX keeps.
    idx = torch.argmax(x, dim=axis, keepdim=True)
    return torch.zeros_like(x).scatter_(axis, idx, 1)


@reference_op("Softmax")
def softmax(x: Tensor, *, axis: int = -1, coerce_2d: int = 0) -> Tensor:
    """Y = exp(X) / sum(exp(X)) along `axis` (coerce_2d=1: opset<13 2-D flattening)."""
    return _coerced(x, axis, coerce_2d, _softmax)


@reference_op("LogSoftmax")
def log_softmax(x: Tensor, *, axis: int = -1, coerce_2d: int = 0) -> Tensor:
    """Y = X - log(sum(exp(X))) along `axis` (coerce_2d=1: opset<13 2-D flattening)."""
    return _coerced(x, axis, coerce_2d, _log_softmax)


@reference_op("Hardmax")
def hardmax(x: Tensor, *, axis: int = -1, coerce_2d: int = 0) -> Tensor:
    """Y = 1 at the first maximum along `axis`, 0 elsewhere (coerce_2d as for Softmax)."""
    return _coerced(x, axis, coerce_2d, _hardmax)


@reference_op("Flatten")
def flatten(x: Tensor, *, axis: int = 1) -> Tensor:
    """Y = X reshaped to 2-D [prod(shape[:axis]), prod(shape[axis:])]."""
    axis = axis + x.dim() if axis < 0 else axis
    if not 0 <= axis <= x.dim():
        raise ValueError(f"Flatten axis {axis} is out of range for rank {x.dim()}")
    rows = 1
    for v in x.shape[:axis]:
        rows *= v
    cols = 1
    for v in x.shape[axis:]:
        cols *= v
    return x.reshape(rows, cols)


@reference_op("DepthToSpace")
def depth_to_space(x: Tensor, *, blocksize: int, mode: str = "DCR") -> Tensor:
    """Y = X [N, C*b*b, H, W] rearranged to [N, C, H*b, W*b] (depth-column-row or CRD order)."""
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"DepthToSpace mode must be 'DCR' or 'CRD', got {mode!r}")
    return y.reshape(n, c // (b * b), h * b, w * b)


@reference_op("SpaceToDepth")
def space_to_depth(x: Tensor, *, blocksize: int) -> Tensor:
    """Y = X [N, C, H*b, W*b] rearranged to [N, C*b*b, H, W] (inverse of DepthToSpace DCR)."""
    n, c, h, w = x.shape
    b = blocksize
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)

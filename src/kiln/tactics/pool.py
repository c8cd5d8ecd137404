"""MaxPool through torch's pooling kernels (cuDNN / native CUDA) and kiln's Triton kernel
(kernels/triton/pool.py: 2-D, float, int8/uint8 and float8 X, any memory format), for nodes
that do not use the Indices output. The reference computes Indices always (a second windowed
pass over a tensor of positions), which costs more than the pooling itself.

Padding follows the reference exactly: the geometry (ONNX pads, auto_pad, ceil_mode) comes
from the reference's `pool_geometry`; symmetric pads that torch accepts are passed to the
kernel, anything else is padded explicitly with the dtype's lowest value first.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.common import to_torch_pad
from kiln.kernels.reference.pooling import lowest_value, pool_geometry
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def max_pool(x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Sequence[int] | None = None, kernel_shape: Sequence[int],
             pads: Sequence[int] | None = None, storage_order: int = 0,
             strides: Sequence[int] | None = None) -> torch.Tensor:
    """Y = max over each window (no Indices)."""
    k, s, d, p, out = pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    n = len(k)
    spans = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    ends = [(out[i] - 1) * s[i] + spans[i] - x.shape[2 + i] - p[i] for i in range(n)]
    if all(p[i] == ends[i] and 2 * p[i] <= k[i] for i in range(n)):
        return _POOL[n](x, k, s, p[:n], d)
    x = F.pad(x, to_torch_pad(p[:n] + ends), value=lowest_value(x.dtype))
    return _POOL[n](x, k, s, 0, d)


def _supports(query: TacticQuery) -> bool:
    if query.device != "cuda" or query.n_outputs != 1:
        return False
    if query.input_dtypes[0] not in ("float16", "bfloat16", "float32", "float64"):
        return False
    rank = len(query.attrs.get("kernel_shape", ()))
    return rank in _POOL


register_tactic(Tactic("MaxPool.torch", "MaxPool", 1, ("cuda",), max_pool, _supports))


TRITON_DTYPES = ("float16", "bfloat16", "float32", "int8", "uint8", "float8_e4m3fn")


def _supports_triton(query: TacticQuery) -> bool:
    from kiln.kernels.triton.pool import MAX_TAPS

    if query.device != "cuda" or query.n_outputs != 1 or query.input_dtypes[0] not in TRITON_DTYPES:
        return False
    k = list(query.attrs.get("kernel_shape", ()))
    return len(k) == 2 and k[0] * k[1] <= MAX_TAPS


if kiln_triton.available():
    from kiln.kernels.triton import pool as _triton_pool

    register_tactic(Tactic("MaxPool.triton", "MaxPool", 3, ("cuda",), _triton_pool.max_pool2d, _supports_triton,
                           configs=_triton_pool.CONFIGS))

"""Running reductions along one axis: CumProd (CumSum lives in reduce.py)."""
from __future__ import annotations

import torch

from kiln.kernels.reference.common import as_scalar, norm_axis
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

# torch has no scans for these: compute in int64, whose wrap-around keeps the low bits exact.
_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _scan(x: Tensor, axis: Tensor, exclusive: int, reverse: int, identity: int) -> tuple[Tensor, int]:
    """X flipped (reverse) and shifted by one with `identity` first (exclusive), and the axis."""
    ax = norm_axis(int(as_scalar(axis)), x.dim())
    if reverse:
        x = x.flip(ax)
    if exclusive and x.shape[ax] > 0:
        first = torch.full_like(x.narrow(ax, 0, 1), identity)
        x = torch.cat([first, x.narrow(ax, 0, x.shape[ax] - 1)], dim=ax)
    return x, ax


@reference_op("CumProd")
def cum_prod(x: Tensor, axis: Tensor, *, exclusive: int = 0, reverse: int = 0) -> Tensor:
    """Y = running product of X along `axis`, optionally exclusive and/or from the end."""
    dtype = x.dtype
    if dtype == torch.uint64:
        x = x.view(torch.int64)
    elif dtype in _UNSIGNED:
        x = x.to(torch.int64)
    x, ax = _scan(x, axis, exclusive, reverse, 1)
    y = torch.cumprod(x, dim=ax, dtype=x.dtype)
    if reverse:
        y = y.flip(ax)
    if dtype == torch.uint64:
        return y.view(torch.uint64)
    return y.to(dtype)

"""Helpers shared by the reference op families: axes, padding arithmetic, dtypes.

Everything here works on Python ints and torch tensors alike and never moves a
tensor's data to the host except tiny index/shape tensors (`as_ints`).
"""
from __future__ import annotations

from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def norm_axis(axis: int, rank: int) -> int:
    """Map a possibly negative ONNX axis into [0, rank); rank 0 accepts axis 0 / -1."""
    r = max(rank, 1)
    if not -r <= axis < r:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + r if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [norm_axis(int(a), rank) for a in axes]


def as_ints(t: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    """Read a small shape/index tensor (e.g. Reshape's `shape`) as Python ints.

    This is the one place data crosses to the host: such inputs decide output shapes,
    so they must be known on the host anyway.
    """
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def as_scalar(t: torch.Tensor) -> int | float | bool:
    """Read a one-element tensor as a Python number (host transfer of one value)."""
    return t.reshape(-1)[0].item()


def is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which to accumulate a float reduction: fp16/bf16 widen to float32.

    Matches ONNX `stash_type=1` and keeps the oracle exact enough for half types.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def float_like(t: torch.Tensor) -> torch.Tensor:
    """`t` in a float dtype suitable for transcendental math (ints go to float64).

    float64 keeps every int32 exactly, so results cast back to the int type agree
    with numpy, which computes such ops in float64 too.
    """
    if t.dtype.is_floating_point:
        return t
    return t.to(torch.float64)


# ---------------------------------------------------------------- conv / pool padding


def spatial_attrs(rank: int, kernel_shape: Sequence[int], strides: Sequence[int] | None,
                  dilations: Sequence[int] | None) -> tuple[list[int], list[int], list[int]]:
    """Fill the ONNX defaults (all ones) for strides and dilations of `rank` spatial dims."""
    k = [int(v) for v in kernel_shape]
    s = [int(v) for v in strides] if strides else [1] * rank
    d = [int(v) for v in dilations] if dilations else [1] * rank
    if not len(k) == len(s) == len(d) == rank:
        raise ValueError(f"kernel_shape {k}, strides {s}, dilations {d} must all have {rank} entries")
    return k, s, d


def resolve_pads(auto_pad: str, in_shape: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int],
                 pads: Sequence[int] | None) -> list[int]:
    """The ONNX `pads` ([x1_begin, x2_begin, ..., x1_end, x2_end, ...]) implied by `auto_pad`.

    SAME_* make output = ceil(input / stride): the total padding needed is split in
    half and the odd element goes to the end (SAME_UPPER) or the beginning (SAME_LOWER).
    """
    n = len(in_shape)
    if auto_pad in ("NOTSET", ""):
        return [int(p) for p in pads] if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}; expected NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def pool_output_size(size: int, k: int, s: int, d: int, pad_begin: int, pad_end: int,
                     ceil_mode: int) -> int:
    """Number of windows along one axis, with PyTorch's/ONNX Runtime's ceil_mode rule.

    In ceil mode a last, partial window is kept only if it starts inside the input or
    its leading padding; windows that would start in the trailing padding are dropped.
    """
    span = size + pad_begin + pad_end - ((k - 1) * d + 1)
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pad_begin:
            out -= 1
    else:
        out = span // s + 1
    return max(out, 0)


def to_torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX pads (all begins, then all ends) -> F.pad order (last axis first, begin/end pairs)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [int(pads[i]), int(pads[i + n])]
    return out

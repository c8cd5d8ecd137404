"""Resize (opset 19 form; the importer maps Upsample and older Resize onto it).

Design note: every supported mode is separable, so the op resizes one axis at a time.
For each axis it builds, on the device, the taps (source indices [out, T]) and their
weights [out, T]: nearest has one tap of weight 1, linear two, cubic four (more with
antialias on a shrinking axis, where the kernel is stretched by 1/scale). The axis
is then gathered and summed with the weights. One routine thus covers every
coordinate transformation mode, any rank and the `axes` attribute. Nearest copies
values exactly, so it keeps integer dtypes exact too; linear and cubic work in float64.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from kiln.kernels.reference.common import as_ints, norm_axes
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _source_coords(out_len: int, in_len: int, scale: float, mode: str,
                   roi: tuple[float, float], device: torch.device) -> Tensor:
    """x_original for each output position (float64 [out]), per coordinate_transformation_mode.

    As in the spec, align_corners and tf_crop_and_resize divide by the real-valued
    resized length `scale * in_len`, which differs from `out_len` when it is fractional.
    """
    x = torch.arange(out_len, dtype=torch.float64, device=device)
    length = scale * in_len
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjust = out_len / length
        return in_len / 2 * (1 - adjust) + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        # The spec's 0 for a resized length of 1 (onnx's reference uses -0.5; ORT the spec).
        return (x + 0.5) / scale - 0.5 if length > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (length - 1) if length != 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":  # opsets 11-12 only
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length != 1:
            return start * (in_len - 1) + x * (end - start) * (in_len - 1) / (length - 1)
        return torch.full_like(x, start * (in_len - 1) + (end - start) * (in_len - 1) / 2)
    raise ValueError(f"unknown Resize coordinate_transformation_mode {mode!r}")


def _nearest(x: Tensor, nearest_mode: str) -> Tensor:
    if nearest_mode == "round_prefer_floor":
        return torch.where(x - x.floor() == 0.5, x.floor(), x.round())
    if nearest_mode == "round_prefer_ceil":
        return torch.where(x - x.floor() == 0.5, x.ceil(), x.round())
    if nearest_mode == "floor":
        return x.floor()
    if nearest_mode == "ceil":
        return x.ceil()
    raise ValueError(f"unknown Resize nearest_mode {nearest_mode!r}")


def _kernel(d: Tensor, mode: str, a: float) -> Tensor:
    """Interpolation kernel at distances d: the triangle (linear) or Keys cubic (cubic)."""
    d = d.abs()
    if mode == "linear":
        return (1 - d).clamp(min=0)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _taps(x: Tensor, in_len: int, scale: float, attrs: dict) -> tuple[Tensor, Tensor]:
    """(indices [out, T], weights [out, T]) interpolating at source coordinates x.

    Linear has taps floor(x) + 0..1 and cubic floor(x) - 1..2. With antialias and a
    shrinking axis the kernel is stretched by 1/scale (more taps, weights normalised
    to sum 1), so that every input sample contributes, as the spec's reference does.
    """
    mode = attrs["mode"]
    if mode == "nearest":
        return _nearest(x, attrs["nearest_mode"]).unsqueeze(1), torch.ones_like(x).unsqueeze(1)
    if mode not in ("linear", "cubic"):
        raise ValueError(f"Resize mode must be nearest, linear or cubic; got {mode!r}")
    stretch = attrs["antialias"] and scale < 1
    s = scale if stretch else 1.0
    radius = 1 if mode == "linear" else 2
    start = math.floor(-radius / s) + 1
    offsets = torch.arange(start, 1 - start + 1, dtype=x.dtype, device=x.device)
    base = x.floor()
    idx = base.unsqueeze(-1) + offsets
    w = _kernel((offsets - (x - base).unsqueeze(-1)) * s, mode, attrs["cubic_coeff_a"])
    if attrs["exclude_outside"]:
        # Taps outside the input get no weight; the rest are renormalised below.
        w = torch.where((idx >= 0) & (idx <= in_len - 1), w, torch.zeros_like(w))
    if stretch or attrs["exclude_outside"]:
        total = w.sum(dim=-1, keepdim=True)
        w = w / torch.where(total == 0, torch.ones_like(total), total)
    return idx, w


def _resize_axis(data: Tensor, axis: int, out_len: int, scale: float, roi: tuple[float, float],
                 attrs: dict) -> Tensor:
    in_len = data.shape[axis]
    if out_len == 0 or in_len == 0:
        shape = list(data.shape)
        shape[axis] = out_len
        return data.new_zeros(shape)
    x = _source_coords(out_len, in_len, scale, attrs["coordinate_transformation_mode"], roi, data.device)
    idx, w = _taps(x, in_len, scale, attrs)
    # Positions beyond the edge repeat the edge value (the spec's edge padding).
    flat = idx.clamp(0, in_len - 1).to(torch.int64).reshape(-1)
    picked = data.index_select(axis, flat)
    shape = list(data.shape)
    shape[axis:axis + 1] = list(idx.shape)
    picked = picked.reshape(shape)  # [..., out, T, ...]
    if attrs["mode"] == "nearest":
        out = picked.squeeze(axis + 1)
    else:
        view = [1] * len(shape)
        view[axis], view[axis + 1] = idx.shape
        out = (picked * w.to(data.dtype).reshape(view)).sum(dim=axis + 1)
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        outside = (x < 0) | (x > in_len - 1)
        view = [1] * data.dim()
        view[axis] = out_len
        fill = torch.full((), attrs["extrapolation_value"], dtype=out.dtype, device=out.device)
        out = torch.where(outside.reshape(view), fill, out)
    return out


def _plan(data: Tensor, axes: list[int], scales: list[float] | None, sizes: list[int] | None,
          policy: str) -> tuple[list[int], list[float]]:
    """Output length and scale of each resized axis, from `scales` or `sizes` + policy."""
    ins = [data.shape[a] for a in axes]
    if sizes is None:
        if scales is None:
            raise ValueError("Resize needs either the `scales` or the `sizes` input")
        # Invalid (non-positive) scales give empty axes rather than a crash.
        return [max(0, int(math.floor(n * s))) for n, s in zip(ins, scales)], list(scales)
    ratios = [o / n if n else 1.0 for o, n in zip(sizes, ins)]
    if policy == "stretch":
        return list(sizes), ratios
    if policy not in ("not_larger", "not_smaller"):
        raise ValueError(f"unknown keep_aspect_ratio_policy {policy!r}")
    common = min(ratios) if policy == "not_larger" else max(ratios)
    return [int(common * n + 0.5) for n in ins], [common] * len(ins)


@reference_op("Resize")
def resize(x: Tensor, roi: Tensor | None = None, scales: Tensor | None = None, sizes: Tensor | None = None, *,
           antialias: int = 0, axes: Sequence[int] | None = None,
           coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
           exclude_outside: int = 0, extrapolation_value: float = 0.0,
           keep_aspect_ratio_policy: str = "stretch", mode: str = "nearest",
           nearest_mode: str = "round_prefer_floor") -> Tensor:
    """Y = X resampled to new sizes by nearest, linear or cubic interpolation, axis by axis.

    antialias=1 widens the linear/cubic kernel on shrinking axes (nearest ignores it).
    """
    ax = norm_axes(axes, x.dim()) if axes is not None else list(range(x.dim()))
    scale_list = None
    if scales is not None and scales.numel() > 0:
        scale_list = [float(v) for v in scales.reshape(-1).tolist()]
    size_list = as_ints(sizes) if sizes is not None and sizes.numel() > 0 else None
    out_lens, factors = _plan(x, ax, scale_list, size_list, keep_aspect_ratio_policy)
    rois = [(0.0, 1.0)] * len(ax)
    if roi is not None and roi.numel() > 0:
        r = [float(v) for v in roi.reshape(-1).tolist()]
        rois = list(zip(r[: len(ax)], r[len(ax):]))
    attrs = {"coordinate_transformation_mode": coordinate_transformation_mode, "mode": mode,
             "nearest_mode": nearest_mode, "cubic_coeff_a": cubic_coeff_a,
             "exclude_outside": exclude_outside, "extrapolation_value": extrapolation_value,
             "antialias": antialias}
    # Interpolating modes compute in float64 (as the spec's reference does) and round once.
    out = x if mode == "nearest" else x.to(torch.float64)
    for a, n, f, r in zip(ax, out_lens, factors, rois):
        if n != x.shape[a] or f != 1.0 or coordinate_transformation_mode == "tf_crop_and_resize":
            out = _resize_axis(out, a, n, f, r, attrs)
    if mode == "nearest" or x.dtype.is_floating_point:
        return out.to(x.dtype)
    info = torch.iinfo(x.dtype)  # integer inputs: round, then saturate
    return out.round().clamp(info.min, info.max).to(x.dtype)

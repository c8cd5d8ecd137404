"""Spatial sampling and scatter-back ops: GridSample, AffineGrid, DeformConv, Col2Im, RoiAlign, MaxUnpool.

Design note: GridSample and DeformConv share one N-D sampler, `_sample`. Given pixel
coordinates for every output position it builds, per spatial axis, the taps (indices
[..., T]), their weights and a validity mask (nearest: one tap, linear: two, cubic:
four), combines the axes into the product of taps, gathers them from X flattened over
its spatial dims, and sums. Weights and sums are float64, as the spec's reference
computes them, and rounded once to X's dtype. Coordinates are computed in the grid's
own float type (float32 for float32 grids, as the reference does), which decides the
exact rounding of nearest sampling at ties.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from kiln.kernels.reference.common import as_ints
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


# ------------------------------------------------------------------ the N-D sampler


def _reflect(x: Tensor, lo: float, hi: float) -> Tensor:
    """Reflect x at the borders lo and hi (repeatedly) until it lies within them."""
    rng = hi - lo
    if rng <= 0:
        return torch.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = torch.where(below, lo - x, x - hi)
    n = torch.floor(dx / rng)
    r = dx - n * rng
    even = torch.remainder(n, 2) == 0
    from_below = torch.where(even, lo + r, hi - r)
    from_above = torch.where(even, hi - r, lo + r)
    return torch.where(below, from_below, torch.where(above, from_above, x))


def _cubic(t: Tensor, a: float = -0.75) -> Tensor:
    """Keys cubic weights [..., 4] for taps floor(x) - 1 .. floor(x) + 2, t = x - floor(x)."""
    d = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, far)


def _axis_taps(x: Tensor, size: int, mode: str, padding: str, lo: float,
               hi: float) -> tuple[Tensor, Tensor, Tensor]:
    """(indices, weights float64, valid) [..., T] sampling one axis of length `size` at x."""
    if mode == "nearest":
        idx = x.to(torch.float64).unsqueeze(-1)
        w = torch.ones_like(idx)
    else:
        xd = x.to(torch.float64)
        base = xd.floor()
        t = xd - base
        if mode == "linear":
            idx = torch.stack([base, base + 1], dim=-1)
            w = torch.stack([1 - t, t], dim=-1)
        elif mode == "cubic":
            idx = base.unsqueeze(-1) + torch.arange(-1, 3, dtype=torch.float64, device=x.device)
            w = _cubic(t)
        else:
            raise ValueError(f"GridSample mode must be nearest, linear or cubic; got {mode!r}")
    idx = idx.trunc()  # the reference's int(): toward zero
    if padding == "zeros":
        valid = (idx >= 0) & (idx <= size - 1)
    else:
        if padding == "border":
            idx = idx.clamp(0, size - 1)
        elif padding == "reflection":
            idx = _reflect(idx, lo, hi).trunc()
        else:
            raise ValueError(f"GridSample padding_mode must be zeros, border or reflection; got {padding!r}")
        valid = torch.ones_like(idx, dtype=torch.bool)
    return idx.clamp(0, max(size - 1, 0)).to(torch.int64), w, valid


def _sample(x: Tensor, coords: Sequence[Tensor], mode: str, padding: str,
            borders: Sequence[tuple[float, float]]) -> Tensor:
    """Sample X [B, C, *D] at pixel coordinates coords[i] [B, *O] (one per spatial axis).

    Returns [B, C, *O] in float64 (nearest: in X's dtype, values copied exactly)."""
    b, c, *dims = x.shape
    out_shape = coords[0].shape[1:]
    k = len(dims)
    flat = None
    weight = None
    for i, (xi, size, (lo, hi)) in enumerate(zip(coords, dims, borders)):
        idx, w, valid = _axis_taps(xi, size, mode, padding, lo, hi)
        stride = math.prod(dims[i + 1:])
        w = w * valid
        # Axis i's taps go to tap dim i of [B, *O, T0, T1, ...].
        view = [*idx.shape[:-1]] + [1] * k
        view[len(idx.shape) - 1 + i] = idx.shape[-1]
        idx, w = idx.reshape(view), w.reshape(view)
        flat = idx * stride if flat is None else flat + idx * stride
        weight = w if weight is None else weight * w
    flat = flat.reshape(b, 1, -1)
    weight = weight.reshape(b, 1, *out_shape, -1)
    src = x.reshape(b, c, -1)
    if src.shape[-1] == 0:
        return src.new_zeros((b, c, *out_shape))
    picked = torch.gather(src, 2, flat.expand(b, c, flat.shape[-1])).reshape(b, c, *out_shape, -1)
    if mode == "nearest":
        return torch.where(weight[..., 0] != 0, picked[..., 0], torch.zeros_like(picked[..., 0]))
    return (picked.to(torch.float64) * weight).sum(-1)


def _coord_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _denormalize(n: Tensor, size: int, align_corners: int) -> Tensor:
    """Grid coordinate in [-1, 1] -> pixel coordinate along an axis of `size` pixels."""
    if align_corners:
        return (n + 1) / 2.0 * (size - 1)
    return ((n + 1) * size - 1) / 2.0


def _borders(dims: Sequence[int], align_corners: int) -> list[tuple[float, float]]:
    return [(0.0, d - 1.0) if align_corners else (-0.5, d - 0.5) for d in dims]



@reference_op("GridSample")
def grid_sample(x: Tensor, grid: Tensor, *, align_corners: int = 0, mode: str = "linear",
                padding_mode: str = "zeros") -> Tensor:
    """Y [N, C, *O] = X sampled at grid [N, *O, k] (normalized (x, y, ...) coordinates in [-1, 1])."""
    dims = list(x.shape[2:])
    k = len(dims)
    if grid.shape[-1] != k or grid.shape[0] != x.shape[0]:
        raise ValueError(f"GridSample grid {tuple(grid.shape)} does not match X {tuple(x.shape)}")
    borders = _borders(dims, align_corners)
    g = grid.to(_coord_dtype(grid))
    coords = []
    for i, size in enumerate(dims):
        c = _denormalize(g[..., k - 1 - i], size, align_corners)  # the grid lists x (last axis) first
        if mode == "nearest":
            c = torch.round(c)  # half to even, as PyTorch and the reference
        lo, hi = borders[i]
        outside = (c < lo) | (c > hi)
        if padding_mode == "border":
            c = torch.where(outside, c.clamp(0, size - 1), c)
        elif padding_mode == "reflection":
            c = torch.where(outside, _reflect(c, lo, hi), c)
        coords.append(c)
    y = _sample(x, coords, mode, padding_mode, borders)
    return y.to(x.dtype)


@reference_op("AffineGrid")
def affine_grid(theta: Tensor, size: Tensor, *, align_corners: int = 0) -> Tensor:
    """Grid [N, *S, k] = theta [N, k, k+1] applied to the normalized coordinates of an output of size [N, C, *S]."""
    n, _, *spatial = as_ints(size)
    axes = []
    for d in spatial:
        if align_corners:
            a = torch.linspace(-1.0, 1.0, d, dtype=torch.float64, device=theta.device) if d > 1 else \
                torch.full((d,), -1.0, dtype=torch.float64, device=theta.device)
        else:
            a = (torch.arange(d, dtype=torch.float64, device=theta.device) * 2 + 1) / d - 1
        axes.append(a)
    mesh = torch.meshgrid(*axes, indexing="ij") if axes else []
    # Homogeneous points (x, y, [z,] 1): the last spatial axis comes first.
    pts = torch.stack([*reversed(mesh), torch.ones(spatial, dtype=torch.float64, device=theta.device)], dim=-1)
    grid = torch.einsum("nij,...j->n...i", theta.to(torch.float64), pts)
    return grid.to(theta.dtype)


# ------------------------------------------------------------------ DeformConv


@reference_op("DeformConv")
def deform_conv(x: Tensor, w: Tensor, offset: Tensor, b: Tensor | None = None, mask: Tensor | None = None, *,
                dilations: Sequence[int] | None = None, group: int = 1,
                kernel_shape: Sequence[int] | None = None, offset_group: int = 1,
                pads: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> Tensor:
    """Y = convolution of X with W whose sampling points are shifted by `offset` (bilinear, zero outside)
    and scaled by `mask`."""
    n, ic, *dims = x.shape
    k = len(dims)
    oc = w.shape[0]
    ks = [int(v) for v in kernel_shape] if kernel_shape else list(w.shape[2:])
    s = [int(v) for v in strides] if strides else [1] * k
    d = [int(v) for v in dilations] if dilations else [1] * k
    p = [int(v) for v in pads] if pads else [0] * (2 * k)
    out = list(offset.shape[2:])
    taps = math.prod(ks)
    if ic % offset_group or ic != w.shape[1] * group or oc % group:
        raise ValueError(f"DeformConv: X {tuple(x.shape)}, W {tuple(w.shape)}, group {group} and "
                         f"offset_group {offset_group} do not fit together")
    if offset.shape[1] != offset_group * taps * k:
        raise ValueError(f"DeformConv offset {tuple(offset.shape)} needs {offset_group * taps * k} channels")
    cd = _coord_dtype(offset)
    off = offset.to(cd).reshape(n, offset_group, taps, k, *out)
    # Pixel coordinates of each (kernel tap, output position) along each axis.
    kpos = torch.meshgrid(*[torch.arange(kk, device=x.device) for kk in ks], indexing="ij")
    coords = []
    for i in range(k):
        base = torch.arange(out[i], device=x.device, dtype=cd) * s[i] - p[i]
        view = [1] * k
        view[i] = out[i]
        tap = (kpos[i].reshape(-1) * d[i]).to(cd)
        c = tap.reshape(taps, *[1] * k) + base.reshape(view)          # [taps, *out]
        c = c + off[:, :, :, i]                                      # [N, G, taps, *out]
        coords.append(c.reshape(n * offset_group, taps, *out))
    borders = _borders(dims, 1)
    xg = x.reshape(n * offset_group, ic // offset_group, *dims)
    cols = _sample(xg, coords, "linear", "zeros", borders)           # [N*G, ic/G, taps, *out]
    cols = cols.reshape(n, offset_group, ic // offset_group, taps, *out)
    if mask is not None:
        m = mask.to(torch.float64).reshape(n, offset_group, 1, taps, *out)
        cols = cols * m
    cols = cols.reshape(n, group, ic // group, taps, *out)
    wg = w.to(torch.float64).reshape(group, oc // group, ic // group, taps)
    y = torch.einsum("ngct...,gmct->ngm...", cols, wg).reshape(n, oc, *out)
    if b is not None:
        y = y + b.to(torch.float64).reshape(1, oc, *[1] * k)
    return y.to(x.dtype)


# ------------------------------------------------------------------ Col2Im


@reference_op("Col2Im")
def col2im(x: Tensor, image_shape: Tensor, block_shape: Tensor, *, dilations: Sequence[int] | None = None,
           pads: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> Tensor:
    """Y [N, C, *image_shape] = the column blocks of X [N, C * prod(block_shape), L] summed back into place."""
    img = as_ints(image_shape)
    blk = as_ints(block_shape)
    k = len(img)
    d = [int(v) for v in dilations] if dilations else [1] * k
    p = [int(v) for v in pads] if pads else [0] * (2 * k)
    s = [int(v) for v in strides] if strides else [1] * k
    kernel = math.prod(blk)
    if kernel <= 0 or x.shape[1] % kernel:
        raise ValueError(f"Col2Im input {tuple(x.shape)}: dim 1 must be a multiple of prod(block_shape {blk})")
    n, c = x.shape[0], x.shape[1] // kernel
    blocks = [(img[i] + p[i] + p[i + k] - d[i] * (blk[i] - 1) - 1) // s[i] + 1 for i in range(k)]
    if math.prod(blocks) != x.shape[2]:
        raise ValueError(f"Col2Im input {tuple(x.shape)}: expected {math.prod(blocks)} blocks for image "
                         f"{img}, block {blk}, pads {p}, strides {s}, dilations {d}")
    # Image position of each (kernel offset, block) pair, per axis; then flattened.
    koff = torch.meshgrid(*[torch.arange(v, device=x.device) for v in blk], indexing="ij")
    bpos = torch.meshgrid(*[torch.arange(v, device=x.device) for v in blocks], indexing="ij")
    flat = torch.zeros((kernel, math.prod(blocks)), dtype=torch.int64, device=x.device)
    inside = torch.ones_like(flat, dtype=torch.bool)
    for i in range(k):
        pos = bpos[i].reshape(1, -1) * s[i] - p[i] + koff[i].reshape(-1, 1) * d[i]
        inside &= (pos >= 0) & (pos < img[i])
        flat = flat * img[i] + pos
    acc = torch.float64 if x.dtype.is_floating_point else x.dtype
    cols = x.reshape(n, c, -1).to(acc)
    keep = inside.reshape(-1)
    y = torch.zeros((n, c, math.prod(img)), dtype=acc, device=x.device)
    y.index_add_(2, flat.reshape(-1)[keep], cols[:, :, keep])
    return y.reshape(n, c, *img).to(x.dtype)


# ------------------------------------------------------------------ RoiAlign


def _roi_axis(start: Tensor, extent: Tensor, bins: int, grid: Tensor, g_max: int,
              size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample points along one axis, per roi: (low, high, w_low, w_high, valid) [R, bins, g_max]."""
    bin_size = (extent / bins).reshape(-1, 1, 1)
    pos = torch.arange(bins, dtype=torch.float64, device=start.device).reshape(1, -1, 1)
    it = torch.arange(g_max, dtype=torch.float64, device=start.device).reshape(1, 1, -1)
    g = grid.to(torch.float64).reshape(-1, 1, 1)
    v = start.reshape(-1, 1, 1) + pos * bin_size + (it + 0.5) * bin_size / g.clamp(min=1)
    valid = (v >= -1.0) & (v <= size) & (it < g)
    v = v.clamp(min=0)
    low = v.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    v = torch.where(at_edge, low, v)
    frac = v - low
    return low.to(torch.int64), high.to(torch.int64), 1 - frac, frac, valid


@reference_op("RoiAlign")
def roi_align(x: Tensor, rois: Tensor, batch_indices: Tensor, *,
              coordinate_transformation_mode: str = "half_pixel", mode: str = "avg", output_height: int = 1,
              output_width: int = 1, sampling_ratio: int = 0, spatial_scale: float = 1.0) -> Tensor:
    """Y [R, C, output_height, output_width] = bilinear samples of each region, averaged (or maxed) per bin.

    As the reference (and ONNX Runtime): samples beyond one pixel outside X count as
    zero, and max mode takes the largest of the four weighted corner values."""
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ValueError(f"unknown RoiAlign coordinate_transformation_mode {coordinate_transformation_mode!r}")
    if mode not in ("avg", "max"):
        raise ValueError(f"RoiAlign mode must be avg or max; got {mode!r}")
    _, c, h, w = x.shape
    r = rois.shape[0]
    ph, pw = int(output_height), int(output_width)
    half = coordinate_transformation_mode == "half_pixel"
    box = rois.to(torch.float64) * spatial_scale - (0.5 if half else 0.0)
    start_w, start_h, end_w, end_h = box.reshape(r, 4).unbind(-1)
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if not half:  # malformed rois are forced to 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((r,), sampling_ratio, dtype=torch.int64, device=x.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).to(torch.int64)
        grid_w = torch.ceil(roi_w / pw).to(torch.int64)
    gh_max = max([1, *as_ints(grid_h.amax(0, keepdim=True))]) if r else 1
    gw_max = max([1, *as_ints(grid_w.amax(0, keepdim=True))]) if r else 1
    yl, yh, wyl, wyh, vy = _roi_axis(start_h, roi_h, ph, grid_h, gh_max, h)
    xl, xh, wxl, wxh, vx = _roi_axis(start_w, roi_w, pw, grid_w, gw_max, w)
    bi = batch_indices.to(torch.int64).reshape(-1, 1, 1, 1, 1)
    src = x.to(torch.float64)
    inside = (vy[:, :, :, None, None] & vx[:, None, None, :, :]).unsqueeze(-1)  # [R, ph, gh, pw, gw, 1]

    def corner(iy: Tensor, ix: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
        vals = src[bi, :, iy[:, :, :, None, None], ix[:, None, None, :, :]]   # [R, ph, gh, pw, gw, C]
        wt = (wy[:, :, :, None, None] * wx[:, None, None, :, :]).unsqueeze(-1)
        return torch.where(inside, wt * vals, torch.zeros_like(vals))

    parts = [corner(yl, xl, wyl, wxl), corner(yl, xh, wyl, wxh), corner(yh, xl, wyh, wxl), corner(yh, xh, wyh, wxh)]
    in_grid = ((torch.arange(gh_max, device=x.device).reshape(1, 1, -1, 1, 1) < grid_h.reshape(-1, 1, 1, 1, 1))
               & (torch.arange(gw_max, device=x.device).reshape(1, 1, 1, 1, -1) < grid_w.reshape(-1, 1, 1, 1, 1)))
    in_grid = in_grid.unsqueeze(-1)
    if mode == "avg":
        total = torch.where(in_grid, sum(parts), torch.zeros_like(parts[0])).sum(dim=(2, 4))
        count = (grid_h * grid_w).clamp(min=1).to(torch.float64).reshape(-1, 1, 1, 1)
        y = total / count
    else:
        best = torch.stack(parts).amax(0)
        best = torch.where(in_grid, best, torch.full_like(best, -math.inf)).amax(dim=(2, 4))
        y = torch.where(torch.isinf(best) & (best < 0), torch.zeros_like(best), best)
    return y.permute(0, 3, 1, 2).to(x.dtype).contiguous()


# ------------------------------------------------------------------ MaxUnpool


@reference_op("MaxUnpool")
def max_unpool(x: Tensor, indices: Tensor, output_shape: Tensor | None = None, *,
               kernel_shape: Sequence[int], pads: Sequence[int] | None = None,
               strides: Sequence[int] | None = None) -> Tensor:
    """Y = zeros with each X value put back at its MaxPool index (flat over the unpooled shape).

    The indices count over the shape MaxPool's inverse implies; with `output_shape`
    that tensor is placed at the start of each axis of the (possibly larger) output,
    as the spec's reference does."""
    k = len(kernel_shape)
    s = [int(v) for v in strides] if strides else [1] * k
    p = [int(v) for v in pads] if pads else [0] * (2 * k)
    inferred = [*x.shape[:2]] + [(x.shape[2 + i] - 1) * s[i] - (p[i] + p[k + i]) + int(kernel_shape[i])
                                 for i in range(k)]
    y = torch.zeros(math.prod(inferred), dtype=x.dtype, device=x.device)
    y[indices.reshape(-1).to(torch.int64)] = x.reshape(-1)
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    shape = as_ints(output_shape)
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    common = tuple(slice(0, min(a, b)) for a, b in zip(shape, inferred))
    out[common] = y[common]
    return out


@reference_op("MaxRoiPool")
def max_roi_pool(x: Tensor, rois: Tensor, *, pooled_shape: Sequence[int], spatial_scale: float = 1.0) -> Tensor:
    """Y[r, c] = max pooling of X[batch_r, c] over RoI r (x1, y1, x2, y2 scaled and rounded, as in
    Caffe's RoI pooling) split into pooled_shape bins; an empty bin gives 0."""
    ph_n, pw_n = int(pooled_shape[0]), int(pooled_shape[1])
    n_rois, channels, height, width = rois.shape[0], x.shape[1], x.shape[2], x.shape[3]
    y = x.new_zeros((n_rois, channels, ph_n, pw_n))
    for r, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = round(x1 * spatial_scale), round(y1 * spatial_scale)
        ex, ey = round(x2 * spatial_scale), round(y2 * spatial_scale)
        bin_h = max(ey - sy + 1, 1) / ph_n
        bin_w = max(ex - sx + 1, 1) / pw_n
        for ph in range(ph_n):
            h0 = min(max(math.floor(ph * bin_h) + sy, 0), height)
            h1 = min(max(math.ceil((ph + 1) * bin_h) + sy, 0), height)
            for pw in range(pw_n):
                w0 = min(max(math.floor(pw * bin_w) + sx, 0), width)
                w1 = min(max(math.ceil((pw + 1) * bin_w) + sx, 0), width)
                if h1 > h0 and w1 > w0:
                    y[r, :, ph, pw] = x[int(b), :, h0:h1, w0:w1].amax(dim=(-2, -1))
    return y

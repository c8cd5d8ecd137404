"""Softmax and LogSoftmax along one axis, in Triton.

X is viewed as [outer, cols, inner] (cols = X.shape[axis], inner = prod(X.shape[axis+1:]);
with coerce_2d, cols = prod(X.shape[axis:]) and inner = 1). A "row" is one (outer, inner)
pair: its elements sit `inner` apart, so no transpose is needed for a non-last axis, and
rows next to each other are next to each other in memory (coalesced loads along rows).
Kernels and launch shapes follow norm.py: `_softmax_block` holds ROWS whole rows in
registers (one read, one write); `_softmax_loop` walks one long row in chunks (max, sum,
write: three reads). Math is float32; Y is stored in X's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.norm import CONFIGS, DTYPES, launch_params
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

__all__ = ["CONFIGS", "softmax", "log_softmax"]


@triton.jit
def _row_base(rows, n_cols, inner, STRIDED: tl.constexpr):
    """Offset of each row's first element ([R] int64) for rows = outer * inner + i."""
    r = rows.to(tl.int64)
    if STRIDED:
        r = (r // inner) * n_cols * inner + r % inner
    else:
        r = r * n_cols
    return r


@triton.jit
def _col_offset(cols, inner, STRIDED: tl.constexpr):
    """Offset of column `cols` within a row (int64): elements sit `inner` apart."""
    c = cols.to(tl.int64)
    if STRIDED:
        c = c * inner
    return c


@triton.jit
def _softmax_block(X, Y, n_rows, n_cols, inner, LOG: tl.constexpr, STRIDED: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)                 # [ROWS]
    cols = tl.arange(0, BLOCK_N)                                        # [BLOCK_N]
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < n_cols)[None, :]
    offs = _row_base(rows, n_cols, inner, STRIDED)[:, None] + _col_offset(cols, inner, STRIDED)[None, :]
    x = tl.load(X + offs, mask=mask, other=-float("inf")).to(tl.float32)
    # Rows past the end are all -inf; a finite max and a unit sum keep them quiet (no NaN).
    m = tl.where(row_ok, tl.max(x, axis=1), 0.0)
    z = x - m[:, None]
    e = tl.exp(z)                                                       # masked lanes: exp(-inf) = 0
    s = tl.where(row_ok, tl.sum(e, axis=1), 1.0)
    if LOG:
        y = z - tl.log(s)[:, None]
    else:
        y = e / s[:, None]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_loop(X, Y, n_cols, inner, LOG: tl.constexpr, STRIDED: tl.constexpr, CHUNK: tl.constexpr,
                  PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    row = tl.program_id(0)
    base = _row_base(row, n_cols, inner, STRIDED)
    cols = tl.arange(0, CHUNK)
    mx = tl.full([CHUNK], -float("inf"), tl.float32)
    for start in range(0, n_cols, CHUNK):
        c = start + cols
        x = tl.load(X + base + _col_offset(c, inner, STRIDED), mask=c < n_cols, other=-float("inf"))
        mx = tl.maximum(mx, x.to(tl.float32))
    m = tl.max(mx, axis=0)
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, n_cols, CHUNK):
        c = start + cols
        x = tl.load(X + base + _col_offset(c, inner, STRIDED), mask=c < n_cols, other=-float("inf"))
        acc += tl.exp(x.to(tl.float32) - m)
    s = tl.sum(acc, axis=0)
    for start in range(0, n_cols, CHUNK):
        c = start + cols
        ok = c < n_cols
        offs = base + _col_offset(c, inner, STRIDED)
        z = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32) - m
        if LOG:
            y = z - tl.log(s)
        else:
            y = tl.exp(z) / s
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=ok)


def _launch(x: Tensor, axis: int, coerce_2d: int, log: bool, config: dict | None) -> Tensor:
    assert x.dtype in DTYPES, f"softmax kernel takes fp16/bf16/fp32, got {x.dtype}"
    if x.dim() == 0:
        return _launch(x.reshape(1), axis, coerce_2d, log, config).reshape(())
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {x.dim()}")
    axis = axis + x.dim() if axis < 0 else axis
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    if coerce_2d:
        cols, inner = x.shape[axis:].numel(), 1
    else:
        cols, inner = x.shape[axis], x.shape[axis + 1:].numel()
    rows = x.numel() // cols
    p = launch_params(rows, cols, config)
    if p.chunk:
        _softmax_loop[(rows,)](x, y, cols, inner, LOG=log, STRIDED=inner != 1, CHUNK=p.chunk,
                               num_warps=p.num_warps, **launch_options(x))
    else:
        _softmax_block[(triton.cdiv(rows, p.rows),)](x, y, rows, cols, inner, LOG=log, STRIDED=inner != 1,
                                                    ROWS=p.rows, BLOCK_N=p.block_n, num_warps=p.num_warps,
                                                    **launch_options(x))
    return y


def softmax(x: Tensor, *, axis: int = -1, coerce_2d: int = 0, config: dict | None = None) -> Tensor:
    """ONNX Softmax: Y = exp(X) / sum(exp(X)) along `axis` (coerce_2d=1: over X flattened at `axis`)."""
    return _launch(x, axis, coerce_2d, False, config)


def log_softmax(x: Tensor, *, axis: int = -1, coerce_2d: int = 0, config: dict | None = None) -> Tensor:
    """ONNX LogSoftmax: Y = X - max - log(sum(exp(X - max))) along `axis`."""
    return _launch(x, axis, coerce_2d, True, config)

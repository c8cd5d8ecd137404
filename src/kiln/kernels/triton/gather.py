"""ONNX Gather on the GPU in one Triton kernel (the oracle: kernels/reference/indexing.py's gather).

Data is viewed as [outer, N, inner] around the gathered axis (N long), the output as [outer, K,
inner] for K indices; a program copies ROWS output rows of `inner` elements (BLOCK at a time),
each row's index read once, a negative one counted from the end of the axis. The reference
wraps the indices in three elementwise kernels before torch's gather (BERT-base b32's embedding
lookups: 7.5-9.3 us each on an H200, 2026-11-28); here the wrap is two instructions per row.
Indices outside [-N, N) are an error in ONNX: such a row comes out as zeros here, where the
reference's index_select stops the whole device with an assertion.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor
CONFIGS: tuple[dict[str, int], ...] = (
    {"ROWS": 1, "BLOCK": 1024, "num_warps": 4},
    {"ROWS": 4, "BLOCK": 1024, "num_warps": 4},
    {"ROWS": 8, "BLOCK": 512, "num_warps": 4},
    {"ROWS": 16, "BLOCK": 256, "num_warps": 4},
)
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}   # element size -> the type copied


@triton.jit
def _gather_kernel(D, I, Y, n_rows, k, n, inner, ROWS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)             # output rows [outer * K]
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    outer = rows // k
    idx = tl.load(I + rows % k, mask=row_ok, other=0).to(tl.int64)
    idx = tl.where(idx < 0, idx + n, idx)                           # counted from the end
    ok = row_ok & (idx >= 0) & (idx < n)
    src = (outer.to(tl.int64) * n + idx) * inner                    # int64: data may pass 2**31 elements
    mask = ok[:, None] & (cols < inner)[None, :]
    v = tl.load(D + src[:, None] + cols[None, :], mask=mask, other=0)
    tl.store(Y + rows.to(tl.int64)[:, None] * inner + cols[None, :], v,
             mask=row_ok[:, None] & (cols < inner)[None, :])


def gather(data: Tensor, indices: Tensor, *, axis: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """Output = data indexed along `axis` by indices: shape data[:axis] + indices + data[axis+1:]."""
    assert data.dim() >= 1 and -data.dim() <= axis < data.dim(), f"axis {axis} of a rank-{data.dim()} tensor"
    assert indices.dtype in (torch.int32, torch.int64), f"Gather indices of {indices.dtype}: int32 or int64"
    assert data.element_size() in BITS, f"Gather of {data.dtype}: elements of 1, 2, 4 or 8 bytes"
    ax = axis % data.dim()
    cfg = dict(CONFIGS[0] if config is None else config)
    shape = (*data.shape[:ax], *indices.shape, *data.shape[ax + 1:])
    y = torch.empty(shape, dtype=data.dtype, device=data.device)
    n = data.shape[ax]
    outer, inner, k = data.shape[:ax].numel(), data.shape[ax + 1:].numel(), indices.numel()
    if y.numel() == 0:
        return y
    bits = BITS[data.element_size()]   # the elements copied as integers of their size (bool, float8 ...)
    idx = indices if indices.device == data.device else indices.to(data.device)
    grid = (triton.cdiv(outer * k, cfg["ROWS"]), triton.cdiv(inner, cfg["BLOCK"]))
    _gather_kernel[grid](data.contiguous().view(bits), idx.contiguous(), y.view(bits), outer * k, k, n, inner,
                         ROWS=cfg["ROWS"], BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"], **launch_options(data))
    return y

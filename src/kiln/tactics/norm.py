"""Tactics for normalization and softmax: Triton LayerNorm / RMSNorm / Softmax kernels, and
kiln::NormQuantize (a LayerNorm whose output is quantized in the same kernel).

Each kernel views X as rows (one normalisation group each) of `cols` elements and keeps its
math in float32. They register only where Triton imports, and run on CUDA only (the Triton
interpreter is for tests). LayerNormalization.triton returns (Y, Mean, InvStdDev) like the
reference, so it is right whichever outputs the node uses.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.kernels import triton as kiln_triton
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

# Rows longer than this fall back to the reference: the chunked kernel is correct for any
# length but reads each row three times, and torch's kernels do better there.
MAX_COLS = 65536
# kiln::AddLayerNorm's fused kernel holds a row in registers: rows up to this many elements.
BLOCK_COLS = 16384


def _axis(attrs: dict[str, Any], rank: int) -> int | None:
    axis = int(attrs.get("axis", -1))
    return axis + rank if -rank <= axis < 0 else axis if 0 <= axis < rank else None


def _shape(query: TacticQuery, i: int) -> tuple[int | str, ...] | None:
    shapes = query.input_shapes
    return shapes[i] if i < len(shapes) else None


def _cols_ok(shape: tuple[int | str, ...] | None, start: int, stop: int | None = None) -> bool:
    """Whether the row length prod(shape[start:stop]) is 1..MAX_COLS (True if not known)."""
    dims = shape[start:stop] if shape is not None else ()
    if any(not isinstance(d, int) for d in dims):
        return True
    return 1 <= math.prod(dims) <= MAX_COLS


def _rowwise_ok(query: TacticQuery, trailing: bool) -> bool:
    """Shared checks: CUDA, X a float type, axis in range, row length in the kernels' domain."""
    if query.device != "cuda" or not query.input_dtypes or query.input_dtypes[0] not in FLOAT_NAMES:
        return False
    shape = _shape(query, 0)
    if shape is None or len(shape) == 0:
        return shape is None  # rank unknown: the kernel checks axis at run time
    axis = _axis(query.attrs, len(shape))
    if axis is None:
        return False
    return _cols_ok(shape, axis, None if trailing else axis + 1)


def _supports_norm(query: TacticQuery) -> bool:
    if int(query.attrs.get("stash_type", 1)) != 1 or not _rowwise_ok(query, trailing=True):
        return False
    x = _shape(query, 0)
    if x is None:
        return True
    norm_rank = len(x) - _axis(query.attrs, len(x))
    # Scale and B must broadcast over the normalised dims only (not vary per row).
    params = [_shape(query, i) for i in (1, 2)]
    return all(p is None or all(d == 1 for d in p[:max(0, len(p) - norm_rank)]) for p in params)


def _supports_softmax(query: TacticQuery) -> bool:
    return _rowwise_ok(query, trailing=bool(query.attrs.get("coerce_2d", 0)))

def torch_layer_norm(x: Any, scale: Any, b: Any = None, *, axis: int = -1, epsilon: float = 1e-5,
                     stash_type: int = 1) -> Any:
    """Y of LayerNormalization through torch's fused kernel (fp32 statistics for 16-bit inputs)."""
    import torch.nn.functional as F
    axis = axis + x.dim() if axis < 0 else axis
    shape = tuple(x.shape[axis:])

    def fit(t: Any) -> Any:  # [1, C] or [C] against normalised dims (.., C): same data, shape `shape`
        if t is None or tuple(t.shape) == shape:
            return t
        return t.reshape(shape) if t.numel() == math.prod(shape) else t.broadcast_to(shape)
    return F.layer_norm(x, shape, fit(scale), fit(b), epsilon)


def _supports_torch_layer_norm(query: TacticQuery) -> bool:
    """Only Y (torch returns no Mean/InvStdDev), and Scale/B in X's dtype, as F.layer_norm wants."""
    dts = query.input_dtypes
    return (query.n_outputs == 1 and _supports_norm(query)
            and all(d is None or d == dts[0] for d in dts[1:3]))


register_tactic(Tactic("LayerNormalization.torch", "LayerNormalization", 1, ("cuda",), torch_layer_norm,
                       _supports_torch_layer_norm))


def _without_residual(query: TacticQuery) -> TacticQuery | None:
    """kiln::AddLayerNorm's query as LayerNormalization's (X, Scale, B), or None when Residual
    differs from X in type or (known) shape."""
    dts, shapes = query.input_dtypes, query.input_shapes
    if len(dts) < 3 or dts[1] != dts[0]:
        return None
    if len(shapes) >= 2 and (shapes[0] is None or shapes[1] is None or tuple(shapes[0]) != tuple(shapes[1])):
        return None
    return TacticQuery("LayerNormalization", query.device, (dts[0], *dts[2:]), query.attrs,
                       (shapes[0], *shapes[2:]) if shapes else (), query.layout, 1)


def torch_add_layer_norm(x: Any, residual: Any, scale: Any, b: Any = None, *, axis: int = -1,
                         epsilon: float = 1e-5) -> tuple[Any, Any]:
    """kiln::AddLayerNorm as torch's add, then its LayerNorm kernel (two passes)."""
    s = x + residual
    return torch_layer_norm(s, scale, b, axis=axis, epsilon=epsilon), s


def _supports_torch_add_norm(query: TacticQuery) -> bool:
    rest = _without_residual(query)
    return rest is not None and _supports_torch_layer_norm(rest)


def _supports_add_norm(query: TacticQuery, n_outputs: int) -> bool:
    """The fused kernel: rows of at most BLOCK_COLS known elements (the leading dims may be
    symbolic: a dynamic batch is any number of rows); `n_outputs` as the node's."""
    rest = _without_residual(query)
    if query.n_outputs != n_outputs or rest is None or not _supports_norm(rest):
        return False
    x = query.input_shapes[0] if query.input_shapes else None
    if x is None:
        return False
    cols = x[_axis(query.attrs, len(x)):]
    return all(isinstance(d, int) for d in cols) and math.prod(cols) <= BLOCK_COLS


register_tactic(Tactic("kiln::AddLayerNorm.torch", "kiln::AddLayerNorm", 1, ("cuda",), torch_add_layer_norm,
                       _supports_torch_add_norm))


def _supports_norm_quantize(query: TacticQuery) -> bool:
    """kiln::NormQuantize in one kernel: the fused norm's domain (rows of at most BLOCK_COLS known
    elements, Residual like X) and QuantizeLinear.triton's (per tensor, or per channel of the row
    the kernel holds; int8/uint8/float8 out); an x_program only of quantized_sum.py's form."""
    from kiln.kernels.reference.quantized_sum import quantized_sum
    from kiln.tactics.quantized import supports_triton_quantize

    dts = (*query.input_dtypes, *(None,) * 6)[:6]
    shapes = (*query.input_shapes, *(None,) * 6)[:6]
    x = shapes[0]
    if x is None or (dts[1] is not None and (dts[1] != dts[0] or shapes[1] is None or tuple(shapes[1]) != tuple(x))):
        return False
    if query.attrs.get("x_program"):   # X and Residual: the codes of a quantized residual add
        form = quantized_sum(query.attrs["x_program"])
        if form is None or dts[1] is None or (dts[0], dts[1]) != form.code_types[:2]:
            return False
        dts = (form.float_type, None, *dts[2:])
    ln = TacticQuery("LayerNormalization", query.device, (dts[0], dts[2], dts[3]), query.attrs,
                     (x, shapes[2], shapes[3]), query.layout, 1)
    axis = _axis(query.attrs, len(x))
    if not _supports_norm(ln) or axis is None:
        return False
    cols = x[axis:]
    if not all(isinstance(d, int) for d in cols) or math.prod(cols) > BLOCK_COLS:
        return False
    per_column = shapes[4] is not None and math.prod(d for d in shapes[4] if isinstance(d, int)) > 1
    if per_column and axis != len(x) - 1:
        return False  # a per-channel scale must run along the row the kernel holds
    q = TacticQuery("QuantizeLinear", query.device, (dts[0], dts[4], dts[5]),
                    {"output_dtype": query.attrs.get("output_dtype", 0), "precision": query.attrs.get("precision", 0),
                     "saturate": 1, "axis": -1}, (x, shapes[4], shapes[5]), query.layout, 1)
    return supports_triton_quantize(q)


def _register() -> None:
    from kiln.kernels.triton import norm, softmax

    table: list[tuple[str, Callable[..., Any], Callable[[TacticQuery], bool]]] = [
        ("LayerNormalization", norm.layer_norm, _supports_norm),
        ("RMSNormalization", norm.rms_norm, _supports_norm),
        ("Softmax", softmax.softmax, _supports_softmax),
        ("LogSoftmax", softmax.log_softmax, _supports_softmax),
    ]
    for op, kernel, supports in table:
        register_tactic(Tactic(f"{op}.triton", op, 1, ("cuda",), kernel, supports, configs=norm.CONFIGS))
    # kiln::AddLayerNorm in one pass: one tactic that also writes Sum, one for nodes that read Y only.
    for name, n_outputs in (("triton", 2), ("triton_y", 1)):
        register_tactic(Tactic(f"kiln::AddLayerNorm.{name}", "kiln::AddLayerNorm", 1, ("cuda",),
                               functools.partial(norm.add_layer_norm, n_outputs=n_outputs),
                               functools.partial(_supports_add_norm, n_outputs=n_outputs), configs=norm.CONFIGS))
    register_tactic(Tactic("kiln::NormQuantize.triton", "kiln::NormQuantize", 3, ("cuda",), norm.norm_quantize,
                           _supports_norm_quantize, configs=norm.QUANT_CONFIGS))


if kiln_triton.available():
    _register()

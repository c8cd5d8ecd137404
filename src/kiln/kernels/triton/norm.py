"""LayerNorm and RMSNorm over the trailing dims of X, in Triton.

X is viewed as [rows, cols] (cols = prod(X.shape[axis:])). Two kernels:
  - `_norm_block`: ROWS whole rows per program, held in registers ([ROWS, BLOCK_N], BLOCK_N =
    next_pow2(cols), masked): one read and one write of X. Used while BLOCK_N <= BLOCK_MAX.
  - `_norm_loop`: one row per program, walked in CHUNK-wide steps (mean, variance, write):
    three reads of the row (the later ones mostly from L2), any length.
Statistics are float32 (ONNX stash_type=1); Y is stored in X's dtype. LayerNorm also stores
Mean and InvStdDev ([rows] float32), so the tactic returns all three ONNX outputs, like the
reference op, whatever outputs the node uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantize import _division_dtype
from kiln.ir import dtypes
from kiln.kernels.reference.quantized_sum import QuantizedSum, quantized_sum
from kiln.kernels.triton.pointwise import program_key
from kiln.kernels.triton.pointwise_ops import dequantize_code, quantize_code, quantize_value
from kiln.kernels.triton.quantize import (NO_QUANT, OUT_TYPES, PRECISIONS, QuantOut, _in_precision, divide,
                                          quant_out, quantized_dtype, requantize)
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The tuning space: warps per program and rows per program (short rows only; clamped so a
# program holds at most BLOCK_MAX elements).
CONFIGS: tuple[dict[str, int], ...] = (
    {"num_warps": 4, "rows": 1},
    {"num_warps": 8, "rows": 1},
    {"num_warps": 16, "rows": 1},
    {"num_warps": 4, "rows": 4},
    {"num_warps": 8, "rows": 4},
    {"num_warps": 4, "rows": 16},
)
# kiln::NormQuantize's space: the above, and the same with EXACT 0, where each QuantizeLinear in
# the kernel (the output's; a quantized sum's) multiplies by the reciprocal of its scale instead
# of dividing correctly rounded: a code moves only where the quotient lies within a float32 ulp
# of a rounding boundary, within the tuner's one step (compiler/tolerance.py).
QUANT_CONFIGS: tuple[dict[str, int], ...] = CONFIGS + tuple({**c, "EXACT": 0} for c in CONFIGS)

# kernel arguments when the rows are not a quantized sum (unused there)
NO_SUM = QuantizedSum("float32", ("int8", "int8", "int8"), 1.0, 0, 1.0, 0, 1.0, 1.0, 0, 1.0, "float32")

BLOCK_MAX = 16384      # widest row (next_pow2) held in registers; wider rows take the loop kernel
BLOCK_ELEMS = 8192     # at most this many elements per program when packing several short rows
CHUNK = 4096           # loop kernel step


@dataclass(frozen=True, slots=True)
class RowLaunch:
    """How a row-wise kernel is launched: chunk == 0 means the block kernel (whole rows)."""
    rows: int          # rows per program (a power of two)
    block_n: int       # next_pow2(cols), block kernel only
    num_warps: int
    chunk: int


def launch_params(n_rows: int, n_cols: int, config: dict | None) -> RowLaunch:
    """Launch shape for a [n_rows, n_cols] row-wise kernel, from a tuned config or a heuristic.

    Shared by the norm and softmax kernels, which have the same row structure.
    """
    block_n = triton.next_power_of_2(n_cols)
    if block_n > BLOCK_MAX:
        return RowLaunch(1, 0, int((config or {}).get("num_warps", 16)), CHUNK)
    if config:
        rows, num_warps = int(config.get("rows", 1)), int(config.get("num_warps", 4))
    else:  # untuned: ~2K elements per program, 4..16 warps by block size
        rows = max(1, min(16, 2048 // block_n))
        num_warps = 0
    rows = max(1, min(rows, BLOCK_ELEMS // block_n, triton.next_power_of_2(n_rows)))
    if not num_warps:
        num_warps = min(16, max(4, rows * block_n // 512))
    return RowLaunch(rows, block_n, num_warps, 0)


@triton.jit
def _quantized_sum(a, b, AS, AZ, BS, BZ, SS, SI, SZ, SDS, FP: tl.constexpr, S_PREC: tl.constexpr,
                   SQMIN: tl.constexpr, SQMAX: tl.constexpr, EXACT: tl.constexpr):
    """DQ(a) + DQ(b) -> Q -> DQ, op by op as the Pointwise kernel rounds it (quantized_sum.py);
    not EXACT: the Q by the reciprocal of its scale (pointwise_ops.quantize_value)."""
    t = _in_precision(dequantize_code(a.to(tl.int32), AS, AZ, FP) + dequantize_code(b.to(tl.int32), BS, BZ, FP), FP)
    if EXACT:
        code = quantize_code(t, SS, SI, SZ, S_PREC, SQMIN, SQMAX)
    else:
        code = quantize_value(t, SI, SZ, S_PREC, SQMIN, SQMAX)
    return dequantize_code(code, SDS, SZ, FP)


@triton.jit
def _norm_block(X, R, W, B, Y, S, MEAN, RSTD, YQ, QS, QI, QZ, n_rows, n_cols, eps, AS, AZ, BS, BZ, SS, SI, SZ, SDS,
                RMS: tl.constexpr, HAS_B: tl.constexpr, STATS: tl.constexpr,
                HAS_RES: tl.constexpr, SUM_OUT: tl.constexpr, STORE_Y: tl.constexpr,
                QUANT: tl.constexpr, Q_HAS_ZP: tl.constexpr, Q_PREC: tl.constexpr, Q_FP8: tl.constexpr,
                Q_PER_COL: tl.constexpr,
                QMIN: tl.constexpr, QMAX: tl.constexpr, QSUM: tl.constexpr, FP: tl.constexpr, S_PREC: tl.constexpr,
                SQMIN: tl.constexpr, SQMAX: tl.constexpr, EXACT: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)           # [ROWS]
    cols = tl.arange(0, BLOCK_N)                                  # [BLOCK_N]
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]                      # [ROWS, BLOCK_N]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]    # int64: X may pass 2**31 elements
    if QSUM:     # X and R: 8-bit codes of ONNX Runtime's quantized residual add (norm_quantize's x_program)
        x = _quantized_sum(tl.load(X + offs, mask=mask, other=0), tl.load(R + offs, mask=mask, other=0),
                           AS, AZ, BS, BZ, SS, SI, SZ, SDS, FP, S_PREC, SQMIN, SQMAX, EXACT)
        x = tl.where(mask, x, 0.0)
    else:
        x = tl.load(X + offs, mask=mask, other=0.0)
        if HAS_RES:  # x + residual rounded to X's type, as the Add this replaced (add_layer_norm)
            x = (x.to(tl.float32) + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
            if SUM_OUT:
                tl.store(S + offs, x, mask=mask)
    x = x.to(tl.float32)
    if RMS:
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        xhat = x * rstd[:, None]
    else:
        mean = tl.sum(x, axis=1) / n_cols
        d = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / n_cols + eps)
        xhat = d * rstd[:, None]
        if STATS:
            tl.store(MEAN + rows, mean, mask=row_ok)
            tl.store(RSTD + rows, rstd, mask=row_ok)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xhat * w[None, :]
    if HAS_B:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = _in_precision(y, FP)     # Y's type (X's, or the quantized sum's float type), held in float32
    if STORE_Y:
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    if QUANT:  # quantize.py's QuantizeLinear on Y as stored (X's type), the same arithmetic
        # QI: 1 / qs, correctly rounded. Per column (SmoothQuant) or per tensor: then scalars,
        # not a [BLOCK_N] vector and the layout conversions broadcasting it costs.
        zp = 0
        if Q_PER_COL:
            qcol = tl.where(col_ok, cols, 0)
            qs = _in_precision(tl.load(QS + qcol), Q_PREC)[None, :]
            qi = tl.load(QI + qcol)[None, :]
            if Q_HAS_ZP:
                zp = tl.load(QZ + qcol)[None, :]
        else:
            qs = _in_precision(tl.load(QS), Q_PREC)
            qi = tl.load(QI)
            if Q_HAS_ZP:
                zp = tl.load(QZ)
        if EXACT:
            v = _in_precision(divide(_in_precision(y, Q_PREC), qs, qi), Q_PREC)
        else:   # the reciprocal's product: within an ulp of the quotient (QUANT_CONFIGS)
            v = _in_precision(_in_precision(y, Q_PREC) * qi, Q_PREC)
        code = requantize(v, zp, Q_HAS_ZP, Q_FP8, QMIN, QMAX)
        tl.store(YQ + offs, code.to(YQ.dtype.element_ty), mask=mask)


@triton.jit
def _norm_loop(X, W, B, Y, MEAN, RSTD, n_cols, eps,
               RMS: tl.constexpr, HAS_B: tl.constexpr, STATS: tl.constexpr, CHUNK: tl.constexpr,
               PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    row = tl.program_id(0)
    base = row.to(tl.int64) * n_cols
    cols = tl.arange(0, CHUNK)
    mean = 0.0
    if not RMS:
        acc = tl.zeros([CHUNK], dtype=tl.float32)
        for start in range(0, n_cols, CHUNK):
            c = start + cols
            acc += tl.load(X + base + c, mask=c < n_cols, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / n_cols
    acc2 = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, n_cols, CHUNK):
        c = start + cols
        x = tl.load(X + base + c, mask=c < n_cols, other=0.0).to(tl.float32)
        d = tl.where(c < n_cols, x - mean, 0.0)
        acc2 += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc2, axis=0) / n_cols + eps)
    if STATS:
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)
    for start in range(0, n_cols, CHUNK):
        c = start + cols
        ok = c < n_cols
        x = tl.load(X + base + c, mask=ok, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * tl.load(W + c, mask=ok, other=0.0).to(tl.float32)
        if HAS_B:
            y += tl.load(B + c, mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + base + c, y.to(Y.dtype.element_ty), mask=ok)


def _per_col(t: Tensor, norm_shape: torch.Size) -> Tensor:
    """Scale or B broadcast to the normalised shape, flat and contiguous ([cols])."""
    if t.dim() > len(norm_shape):  # leading 1s (e.g. [1, C] for axis=-1) carry nothing
        t = t.reshape(t.shape[t.dim() - len(norm_shape):])
    return t.expand(norm_shape).contiguous().reshape(-1)


def _launch(x: Tensor, w: Tensor, b: Tensor | None, axis: int, eps: float, rms: bool,
            config: dict | None, residual: Tensor | None = None, sum_out: Tensor | None = None,
            stats: bool = True, quant: QuantOut | None = None, store_y: bool = True,
            qsum: QuantizedSum | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Y, mean, rstd of X [rows, cols] normalised per row; mean/rstd are [rows] float32.

    With `residual` (X's shape and type) the rows normalised are X + residual, rounded to X's
    type, and stored into `sum_out` when given (block kernel only: add_layer_norm checks).
    Without `stats` (and for RMSNorm), no statistics are stored and Y is returned in their place.
    With `quant` (block kernel only) Y is also quantized into quant.codes; without `store_y`
    Y itself is not stored and no memory is allocated for it (X is returned in its place).
    With `qsum` (block kernel only) X and `residual` are the 8-bit codes of a quantized residual
    add (kernels/reference/quantized_sum.py) and the rows normalised are its float values; Y is
    of its float type.
    """
    assert x.dtype in DTYPES or (qsum is not None and x.dtype in (torch.int8, torch.uint8)), \
        f"norm kernel takes fp16/bf16/fp32 (or 8-bit codes of a quantized sum), got {x.dtype}"
    fp = x.dtype if qsum is None else dtypes.from_name(qsum.float_type).torch
    x = x.contiguous()
    norm_shape = x.shape[axis:]
    cols = norm_shape.numel()
    rows = x.numel() // cols if cols else 0
    wf = _per_col(w, norm_shape)
    bf = _per_col(b, norm_shape) if b is not None else wf  # dummy pointer when HAS_B is False
    y = torch.empty(x.shape, dtype=fp, device=x.device) if store_y else x  # else X stands in (unwritten)
    if x.numel() == 0:  # statistics of zero columns are NaN, as in the reference
        rows = x.shape[:axis].numel()
        nan = torch.full((rows,), float("nan"), dtype=torch.float32, device=x.device)
        return y, nan, nan.clone()
    store_stats = stats and not rms
    if store_stats:
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    else:  # nothing is stored through them: Y stands in as the pointer, no allocation on the hot path
        mean = rstd = y
    p = launch_params(rows, cols, config)
    flags = dict(RMS=rms, HAS_B=b is not None, STATS=store_stats)
    if p.chunk:
        assert residual is None and quant is None and qsum is None and store_y, \
            "the residual add and the quantized output are fused for rows of at most BLOCK_MAX elements"
        _norm_loop[(rows,)](x, wf, bf, y, mean, rstd, cols, eps, CHUNK=p.chunk, num_warps=p.num_warps,
                            **flags, **launch_options(x))
    else:
        grid = (triton.cdiv(rows, p.rows),)
        r = x if residual is None else residual.contiguous()
        q = quant or NO_QUANT
        sq = qsum or NO_SUM
        sums = (sq.a_scale, sq.a_zp, sq.b_scale, sq.b_zp, sq.sum_scale, sq.sum_inverse, sq.sum_zp, sq.sum_dq_scale)
        s_range = OUT_TYPES[dtypes.from_name(sq.code_types[2]).torch]
        _norm_block[grid](x, r, wf, bf, y, y if sum_out is None else sum_out, mean, rstd,
                          y if quant is None else q.codes, y if quant is None else q.scale,
                          y if quant is None else q.inverse, y if q.zero_point is None else q.zero_point,
                          rows, cols, eps, *sums, QSUM=qsum is not None, FP=PRECISIONS[fp],
                          S_PREC=PRECISIONS[dtypes.from_name(sq.division).torch], SQMIN=s_range[0], SQMAX=s_range[1],
                          EXACT=bool((config or {}).get("EXACT", 1)),
                          HAS_RES=residual is not None and qsum is None, SUM_OUT=sum_out is not None, STORE_Y=store_y,
                          QUANT=quant is not None, Q_HAS_ZP=q.zero_point is not None, Q_PREC=q.precision,
                          Q_PER_COL=q.per_column,
                          Q_FP8=q.fp8, QMIN=q.qmin, QMAX=q.qmax, ROWS=p.rows,
                          BLOCK_N=p.block_n, num_warps=p.num_warps, **flags, **launch_options(x))
    return y, mean, rstd


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def layer_norm(x: Tensor, scale: Tensor, b: Tensor | None = None, *, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1, config: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX LayerNormalization: (Y, Mean, InvStdDev); Mean/InvStdDev are X.shape[:axis] + [1, ...] fp32."""
    assert stash_type == 1, "the Triton LayerNorm keeps statistics in float32 (stash_type=1) only"
    axis = _axis(axis, x.dim())
    y, mean, rstd = _launch(x, scale, b, axis, float(epsilon), False, config)
    stat_shape = tuple(x.shape[:axis]) + (1,) * (x.dim() - axis)
    return y, mean.reshape(stat_shape), rstd.reshape(stat_shape)


def rms_norm(x: Tensor, scale: Tensor, *, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1,
             config: dict | None = None) -> Tensor:
    """ONNX RMSNormalization: Y = X / sqrt(mean(X**2 over [axis, rank)) + epsilon) * Scale."""
    assert stash_type == 1, "the Triton RMSNorm keeps statistics in float32 (stash_type=1) only"
    return _launch(x, scale, None, _axis(axis, x.dim()), float(epsilon), True, config)[0]


def add_layer_norm(x: Tensor, residual: Tensor, scale: Tensor, b: Tensor | None = None, *, axis: int = -1,
                   epsilon: float = 1e-5, n_outputs: int = 2, config: dict | None = None) -> tuple[Tensor, Tensor]:
    """kiln::AddLayerNorm: (Y, Sum), Sum = X + Residual in X's type, Y = LayerNorm(Sum), one pass.

    Rows up to BLOCK_MAX elements (one block per row group). Sum is written only when
    n_outputs is 2; otherwise the second value returned is X (the node does not read it).
    """
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"AddLayerNorm: residual {residual.dtype}{list(residual.shape)} must match X "
                         f"{x.dtype}{list(x.shape)}")
    axis = _axis(axis, x.dim())
    if triton.next_power_of_2(x.shape[axis:].numel()) > BLOCK_MAX:
        raise ValueError(f"AddLayerNorm rows of {x.shape[axis:].numel()} elements exceed the fused kernel's "
                         f"{BLOCK_MAX}")
    s = torch.empty_like(x, memory_format=torch.contiguous_format) if n_outputs > 1 else None
    y = _launch(x, scale, b, axis, float(epsilon), False, config, residual=residual, sum_out=s, stats=False)[0]
    return y, (x if s is None else s)


_SUM_FORMS: dict[str, QuantizedSum | None] = {}


def _sum_form(program: list) -> QuantizedSum | None:
    """quantized_sum(program), read once per program (not on every run of the layer)."""
    key = program_key(program)
    if key not in _SUM_FORMS:
        _SUM_FORMS[key] = quantized_sum(program)
    return _SUM_FORMS[key]


def norm_quantize(x: Tensor, residual: Tensor | None, scale: Tensor, b: Tensor | None, y_scale: Tensor,
                  y_zero_point: Tensor | None = None, *, axis: int = -1, epsilon: float = 1e-5,
                  output_dtype: int = 0, precision: int = 0, float_output: int = 0, sum_output: int = 0,
                  x_program: list | None = None, config: dict | None = None) -> tuple[Tensor, ...]:
    """kiln::NormQuantize (kernels/reference/norm_quantize.py): (Yq, [Y], [Sum]) in one pass.

    LayerNorm of X (+ Residual) with the QuantizeLinear of Y (per tensor, or per channel of the
    normalised last axis) fused into the store,
    the same arithmetic as LayerNormalization then QuantizeLinear.triton (compiled separately, the
    two may sum a row in another order: Yq within compiler/tolerance.py's one step). Rows up to
    BLOCK_MAX elements. With `x_program` (ONNX Runtime's quantized residual add, quantized_sum.py)
    X and Residual are its 8-bit inputs, added in the kernel as the Pointwise kernel adds them."""
    qsum = _sum_form(x_program) if x_program else None
    if x_program and qsum is None:
        raise ValueError("NormQuantize's x_program is not a quantized residual add (DQ + DQ -> Q -> DQ)")
    axis = _axis(axis, x.dim())
    if triton.next_power_of_2(x.shape[axis:].numel()) > BLOCK_MAX:
        raise ValueError(f"NormQuantize rows of {x.shape[axis:].numel()} elements exceed the fused kernel's "
                         f"{BLOCK_MAX}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"NormQuantize: residual {residual.dtype}{list(residual.shape)} must match X "
                         f"{x.dtype}{list(x.shape)}")
    cols = x.shape[axis:].numel()
    assert (y_scale.numel() == 1 or (axis == x.dim() - 1 and y_scale.numel() == cols)) and \
        (y_zero_point is None or y_zero_point.numel() == y_scale.numel()), \
        "NormQuantize quantizes per tensor or per channel of the normalised last axis"
    x = x.contiguous()
    yq = torch.empty(x.shape, dtype=quantized_dtype(y_zero_point, output_dtype), device=x.device)
    quant = quant_out(yq, y_scale, y_zero_point, _division_dtype(y_scale, precision))
    s = torch.empty_like(x) if residual is not None and sum_output and qsum is None else None
    y = _launch(x, scale, b, axis, float(epsilon), False, config, residual=residual, sum_out=s, stats=False,
                quant=quant, store_y=bool(float_output), qsum=qsum)[0]
    return (yq, *((y,) if float_output else ()), *((s,) if s is not None else ()))

"""SmoothQuant: move activation outliers into the weights before int8/fp8 quantization.

A calibrated layer quantizes its activation x per tensor (s_x = amax / qmax), so one outlier
channel (all-MiniLM-L6-v2's LayerNorm outputs: one channel near 28 where the rest stay near
2) sets the step for every channel and the small ones keep few levels. The weights are
quantized per output channel and have room to spare. SmoothQuant (Xiao et al., 2022) divides
each input channel k of x by a factor s_k and multiplies row k of W (the weights that channel
meets) by the same factor:

  x @ W = (x / s) @ (diag(s) W),        s_k = max|x_k|^alpha / max|W_k,:|^(1 - alpha)

with max|x_k| the calibrated per-channel maximum over the last axis and max|W_k,:| the largest
|weight| row k holds across every reader of x. alpha = 1 moves all of the range into the
weights, alpha = 0 none of the activation's; 0.5 to 0.85 balances the two. A factor whose
channel or weight row is all zeros is 1.

It is done only where it is free at run time: x is output Y of a LayerNormalization or of
kiln::AddLayerNorm (whose second output, Sum, is left alone), and that normalisation is
affine per channel, Y = n * Scale + B, so

  Y / s = n * (Scale / s) + B / s

divides its Scale and B constants instead of adding an op. Every reader of Y must be a
MatMul, Gemm or kiln::FusedMatMul that will be quantized (a constant float weight, not kept
float by a layer precision rule, input range calibrated), or a Shape or Size (which read no
values), and Y must not be a graph output: each reader's weight rows are multiplied by s, so
all of them see the same x / s. Other layers are not smoothed and quantize as before.

Everywhere else the division goes into the quantizer. In a post-norm transformer (BERT,
all-MiniLM-L6-v2) every LayerNorm output is also the residual input of the next block's add,
which needs x itself, and an FFN's second matmul reads the GELU output of the first, which no
norm makes. There x / s is an explicit per-channel Mul(x, 1 / s) that only the quantized
readers read (the others keep x), and after quantization (fold_channel_scales) the Mul and
the per-tensor QuantizeLinear of its output, scale t, become one QuantizeLinear of x with the
per-channel scale t * s_k along the last axis: x_k / (t * s_k) rounded, the same values as
(x_k / s_k) / t up to one float rounding. The quantized matmul keeps the per-tensor t as its
activation scale: sum_k round(x_k / (t s_k)) * t * (s_k W_kn) = x @ W. The cost at run time is
a per-channel instead of a per-tensor scale in that QuantizeLinear (or in the norm kernel that
quantizes its output, precision/fuse_norm_quantize.py; or in the requantizing epilogue of the
kiln::QMatMul that makes x, precision/fold_requantize.py). Where x is a quantized convolution's
output, that layer writes x in float for the QuantizeLinear instead (its kernel requantizes per
tensor only).

Alpha "auto" (choose_alpha): one alpha per activation, the point of a grid (ALPHAS) whose
smoothing quantizes calibration rows of the activation (up to 1024, kept by the calibration
run) and its readers' weights with the least squared error of their product. Activations
differ: on all-MiniLM-L6-v2 it picks 0.8 for the attention blocks' LayerNorm outputs and up
to 1.0 for the GELU outputs, which reaches accuracy no single alpha does (BENCHMARKS.md).

The per-tensor range of the smoothed activation is then max_k(max|x_k| / s_k), the largest
of the per-channel maxima divided by s (for an entropy or percentile calibration this is the
smoothed maximum, not a clipped threshold), and the quantizer takes its per-channel weight
scales from diag(s) W. In real arithmetic the rewrite is exact; in floating point Scale / s,
B / s and s * W are each rounded once to the constant's type (one ulp, relative 2^-24 in
float32), so an fp32 run of the smoothed graph matches the original to float rounding, not
bit for bit. The gain comes only once x / s and diag(s) W are quantized.

Run after the optimisation passes and before precision/int8.py or precision/fp8.py, with the
ranges and the channel maxima collected on that same graph (kiln.calibration.collect_statistics
with channels=smoothing_inputs(graph)).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import const_array
from kiln.precision.fold_requantize import per_tensor
from kiln.precision.int8 import QUANTIZABLE_OPS, QuantizableLayer, unsupported_reason

# The quantizable layers whose activation's last axis is the input-channel axis of W.
SMOOTHABLE_READERS = ("MatMul", "Gemm", "kiln::FusedMatMul")
# Readers that see only a tensor's shape, never its values: they do not mind x / s.
_SHAPE_READERS = ("Shape", "Size")
# Normalisations whose first output is affine per channel: Y = n * Scale + B (inputs: scale, B).
_NORMS = {"LayerNormalization": (1, 2), "kiln::AddLayerNorm": (2, 3)}


class SmoothQuantWarning(UserWarning):
    """--smooth-quant found no activation it could smooth."""


@dataclass(frozen=True, slots=True)
class SmoothedActivation:
    """One activation divided by its smoothing factors: the norm that makes it (or the Mul that
    divides it, folded into its QuantizeLinear later), its readers."""
    activation: str
    norm: str
    readers: tuple[str, ...]
    amax_before: float
    amax_after: float
    into: str = "norm"  # "norm": Scale and B divided; "quantizer": a per-channel QuantizeLinear scale
    alpha: float | None = None  # the alpha this activation got (the build's, or the search's with "auto")
    factors: np.ndarray | None = field(default=None, compare=False, repr=False)  # s [C], float64
    read_as: str = ""  # the name its quantized readers read it by now ("": `activation`)

    def to_json(self) -> dict[str, Any]:
        return {"activation": self.activation, "norm": self.norm, "readers": list(self.readers),
                "amax_before": self.amax_before, "amax_after": self.amax_after, "into": self.into,
                "alpha": self.alpha}


@dataclass(frozen=True, slots=True)
class SmoothReport:
    alpha: float | str
    smoothed: tuple[SmoothedActivation, ...]
    ranges: dict[str, float]  # the ranges to quantize with: the smoothed activations' recomputed

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "smoothed": [a.to_json() for a in self.smoothed]}


def smoothing_inputs(graph: Graph, skip: Collection[int] = ()) -> list[str]:
    """Names of the activations read by a MatMul, Gemm or kiln::FusedMatMul: those whose
    per-channel maxima a smoothed build calibrates. `skip`: ids of reader nodes not counted."""
    names: dict[str, None] = {}
    for node in graph.nodes:
        if node.qualified_op in SMOOTHABLE_READERS and id(node) not in skip and node.input(0) is not None \
                and not node.input(0).is_const:
            names[node.input(0).name] = None
    return list(names)


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_k = x_max_k^alpha / w_max_k^(1 - alpha) (float64); 1 where either maximum is 0."""
    x_max = np.asarray(x_max, dtype=np.float64)
    w_max = np.asarray(w_max, dtype=np.float64)
    ok = (x_max > 0) & (w_max > 0) & np.isfinite(x_max) & np.isfinite(w_max)
    s = np.ones_like(x_max)
    s[ok] = x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha)
    return s


def smooth(graph: Graph, ranges: Mapping[str, float], channel_max: Mapping[str, np.ndarray], alpha: float | str,
           keep_float: Collection[int] = (), samples: Mapping[str, np.ndarray] | None = None,
           precision: str = "int8") -> SmoothReport:
    """Smooth every activation that qualifies (module docstring): through its norm's constants
    where that is free, else through an explicit per-channel Mul before its quantized readers
    (fold_channel_scales moves it into their QuantizeLinear). Rewrites `graph` in place; returns
    what was smoothed and the ranges to quantize with. `alpha` "auto": each activation's alpha
    is searched on its calibration `samples` (choose_alpha), for `precision`'s quantizer."""
    new_ranges = dict(ranges)
    done: list[SmoothedActivation] = []

    def factors(name: str, x_max: np.ndarray, layers: list[QuantizableLayer]) -> tuple[np.ndarray, float]:
        w_max = np.max([_row_max(layer) for layer in layers], axis=0)
        a = alpha if alpha != "auto" else choose_alpha((samples or {}).get(name), x_max, layers, precision, w_max)
        return smoothing_factors(x_max, w_max, float(a)), float(a)

    for node in list(graph.nodes):
        if node.qualified_op not in _NORMS or not node.outputs:
            continue
        y = node.outputs[0]
        plan = _plan(graph, node, y, new_ranges, channel_max, keep_float)
        if plan is None:
            continue
        readers, x_max = plan
        s, a = factors(y.name, x_max, [layer for _, layer in readers])
        scale_i, bias_i = _NORMS[node.qualified_op]
        _divide(graph, node, scale_i, s)
        if node.input(bias_i) is not None:
            _divide(graph, node, bias_i, s)
        for reader, layer in readers:
            _scale_rows(graph, reader, layer, s)
        after = float(np.max(x_max / s))
        done.append(SmoothedActivation(y.name, node.name, tuple(r.name for r, _ in readers),
                                       float(new_ranges[y.name]), after, "norm", a, s))
        new_ranges[y.name] = after
    smoothed = {a.activation for a in done}
    for name in smoothing_inputs(graph):
        if name in smoothed:
            continue
        found = _divide_before_readers(graph, name, new_ranges, channel_max, factors, keep_float)
        if found is not None:
            done.append(found)
    # Activations some matmul reads that no layer rule keeps wider: none smoothed is worth a warning.
    wanted = smoothing_inputs(graph, keep_float)
    if not done and wanted:
        warnings.warn(f"--smooth-quant smoothed none of the {len(wanted)} activation(s) that matmuls read "
                      "(none kept wider): each must be float32 or float16, calibrated per channel, and read at its first input "
                      "by matmuls that are quantized with constant weights (a LayerNormalization's output may have "
                      "other readers); the option changes nothing for this model", SmoothQuantWarning, stacklevel=2)
    return SmoothReport(alpha if alpha == "auto" else float(alpha), tuple(done), new_ranges)


def _divide_before_readers(graph: Graph, name: str, ranges: dict[str, float], channel_max: Mapping[str, np.ndarray],
                           factors: Callable[..., tuple[np.ndarray, float]],
                           keep_float: Collection[int]) -> SmoothedActivation | None:
    """x -> Mul(x, 1 / s) -> x / s for x's quantized readers (their weight rows times s); x's
    other readers keep x. None (nothing changed) when x has no such reader or no maxima."""
    y = next((v for n in graph.nodes for v in n.inputs if v is not None and v.name == name), None)
    if y is None or y.is_const or y.dtype is None or y.dtype.name not in _MUL_TYPES or name not in channel_max:
        return None
    x_max = np.asarray(channel_max[name], dtype=np.float64).reshape(-1)
    if x_max.size == 0 or not np.all(np.isfinite(x_max)) or not y.shape or y.shape[-1] != x_max.size:
        return None
    readers: list[tuple[Node, QuantizableLayer]] = []
    for reader, index in y.uses():
        if index != 0 or reader.qualified_op not in SMOOTHABLE_READERS or id(reader) in keep_float:
            continue
        layer = QUANTIZABLE_OPS[reader.qualified_op](reader)
        if isinstance(layer, str) or unsupported_reason(layer, ranges) or layer.x is not y:
            continue
        if layer.w.shape[1 - layer.axis] == x_max.size:
            readers.append((reader, layer))
    if not readers:
        return None
    s, a = factors(name, x_max, [layer for _, layer in readers])
    first = min(graph.nodes.index(r) for r, _ in readers)
    inverse = graph.constant((1.0 / s).astype(_MUL_TYPES[y.dtype.name]), f"{name}_smooth_inverse")
    mul = graph.make_node("Mul", [y, inverse], name=f"{name}_smooth", before=graph.nodes[first])
    out = mul.outputs[0]
    out.dtype, out.shape = y.dtype, y.shape
    for reader, layer in readers:
        reader.set_input(0, out)
        _scale_rows(graph, reader, layer, s)
    after = float(np.max(x_max / s))
    ranges[out.name] = after
    return SmoothedActivation(name, mul.name, tuple(r.name for r, _ in readers), float(ranges[name]), after,
                              "quantizer", a, s, out.name)


ALPHAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)  # the "auto" search's grid
# Activation types the inserted Mul(x, 1 / s) takes, and its constant's type (x's: ONNX's Mul takes
# one type). A float16 1 / s is rounded, but the Mul it makes is folded into the quantizer with the
# exact factors (fold_channel_scales), and the weights are scaled by them in their own type.
_MUL_TYPES = {"float32": np.float32, "float16": np.float16}
AUTO_FALLBACK = 0.85  # "auto" for an activation without calibration rows


def choose_alpha(rows: np.ndarray | None, x_max: np.ndarray, layers: Sequence[QuantizableLayer],
                 precision: str, w_max: np.ndarray | None = None) -> float:
    """The alpha of ALPHAS whose smoothing quantizes these calibration rows of x and the readers'
    weights with the least error: || Q(x / s) @ Qw(diag(s) W) - x @ W ||^2 over the rows, Q per
    tensor over the range the build will use (max_k x_max_k / s_k), Qw per output channel, both
    int8 (round to 127 steps) or float8 e4m3 (precision "fp8"), W the readers' weights side by
    side (`w_max`: their rows' maxima, when the caller has them). AUTO_FALLBACK without rows."""
    if rows is None or len(rows) == 0:
        return AUTO_FALLBACK
    x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    w = torch.cat([torch.from_numpy(np.asarray(layer.w if layer.axis == 1 else layer.w.T, dtype=np.float32))
                   for layer in layers], dim=1)                                       # [K, N]
    want = x @ w
    if w_max is None:
        w_max = np.max([_row_max(layer) for layer in layers], axis=0)
    best, best_err = AUTO_FALLBACK, float("inf")
    for a in ALPHAS:
        s = smoothing_factors(x_max, w_max, a)
        st = torch.from_numpy(s.astype(np.float32))
        xq = _fake_quantize(x / st, torch.tensor(float(np.max(x_max / s))), precision)
        ws = w * st[:, None]
        wq = _fake_quantize(ws, ws.abs().amax(dim=0, keepdim=True), precision)
        err = float(((xq @ wq - want) ** 2).sum())
        if err < best_err:
            best, best_err = a, err
    return best


def _fake_quantize(v: torch.Tensor, amax: torch.Tensor, precision: str) -> torch.Tensor:
    """v quantized symmetrically over [-amax, amax] (per tensor, or per column for a [1, N] amax)
    and dequantized: int8's 127 steps, or float8 e4m3 scaled so that amax is 448."""
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    if precision == "fp8":
        scale = amax / 448.0
        return (v / scale).clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float32) * scale
    step = amax / 127.0
    return torch.round(v / step).clamp(-127, 127) * step


def fold_channel_scales(graph: Graph, report: SmoothReport) -> bool:
    """QuantizeLinear(Mul(x, c), t, zp) -> QuantizeLinear(x, t / c, zp, axis=-1) for the Muls that
    smooth() inserted (`report`'s "quantizer" entries: c = 1 / s over x's last axis, s positive,
    taken exact from the report in float64), where per-tensor QuantizeLinears alone read the Mul.
    Run after quantize_layers / quantize_fp8; True when any changed."""
    changed = False
    factors = {a.norm: a.factors for a in report.smoothed if a.into == "quantizer"}
    for mul in [n for n in graph.nodes if n.qualified_op == "Mul" and n.name in factors]:
        x, c_v = mul.input(0), mul.input(1)
        c = const_array(c_v) if c_v is not None else None
        s = factors[mul.name]
        if c is not None and s is not None and s.shape == c.shape:
            c = 1.0 / s.astype(np.float64)     # the exact factor (the Mul's constant may be float16)
        out = mul.outputs[0]
        users = [u for u, _ in out.uses()]
        if (c is None or c.ndim != 1 or not np.all(c > 0) or not np.all(np.isfinite(c)) or x is None or not x.shape
                or x.shape[-1] != c.size or graph.is_output(out)
                or not users or not all(u.qualified_op == "QuantizeLinear" and u.input(0) is out
                                        and per_tensor(u) for u in users)):
            continue
        for q in users:
            t = const_array(q.input(1)).reshape(()).astype(np.float64)
            scale = (t / c.astype(np.float64)).astype(const_array(q.input(1)).dtype)
            zp = q.input(2)
            q.set_input(0, x)
            q.set_input(1, graph.constant(scale, f"{q.input(1).name}_per_channel"))
            if zp is not None:
                z = const_array(zp)
                q.set_input(2, graph.constant(np.full(c.shape, z.reshape(()), dtype=z.dtype), f"{zp.name}_per_channel"))
            q.attrs["axis"] = len(x.shape) - 1
        graph.remove_node(mul)
        changed = True
    return changed


def _plan(graph: Graph, norm: Node, y: Value, ranges: Mapping[str, float], channel_max: Mapping[str, np.ndarray],
          keep_float: Collection[int]) -> tuple[list[tuple[Node, QuantizableLayer]], np.ndarray] | None:
    """The readers of `y` and its channel maxima when `y` can be smoothed, else None."""
    if graph.is_output(y) or y.name not in channel_max or not y.uses():
        return None
    x_max = np.asarray(channel_max[y.name], dtype=np.float64).reshape(-1)
    channels = x_max.size
    if channels == 0 or not np.all(np.isfinite(x_max)):
        return None
    scale_i, bias_i = _NORMS[norm.qualified_op]
    for i in (scale_i, bias_i):
        v = norm.input(i)
        if i == bias_i and v is None:
            continue
        arr = const_array(v)
        if arr is None or arr.dtype not in (np.float32, np.float16) or arr.ndim == 0 or arr.shape[-1] != channels:
            return None
    readers: list[tuple[Node, QuantizableLayer]] = []
    for reader, index in y.uses():
        if reader.qualified_op in _SHAPE_READERS:
            continue
        if index != 0 or reader.qualified_op not in SMOOTHABLE_READERS or id(reader) in keep_float:
            return None
        layer = QUANTIZABLE_OPS[reader.qualified_op](reader)
        if isinstance(layer, str) or unsupported_reason(layer, ranges) or layer.x is not y:
            return None
        if layer.w.shape[1 - layer.axis] != channels:
            return None
        readers.append((reader, layer))
    return (readers, x_max) if readers else None


def _row_max(layer: QuantizableLayer) -> np.ndarray:
    """max |W_k,:| per input channel k (W's axis 1 - layer.axis)."""
    return np.max(np.abs(layer.w.astype(np.float64)), axis=layer.axis)


def _divide(graph: Graph, node: Node, i: int, s: np.ndarray) -> None:
    v = node.input(i)
    arr = const_array(v)
    new = (arr.astype(np.float64) / s).astype(arr.dtype)
    node.set_input(i, graph.constant(new, f"{v.name}_smoothed"))


def _scale_rows(graph: Graph, reader: Node, layer: QuantizableLayer, s: np.ndarray) -> None:
    shape = [1, 1]
    shape[1 - layer.axis] = -1
    w = layer.w
    new = (w.astype(np.float64) * s.reshape(shape)).astype(w.dtype)
    reader.set_input(1, graph.constant(new, f"{reader.input(1).name}_smoothed"))

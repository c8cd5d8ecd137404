"""Fold a QuantizeLinear into the quantized layer that produces its input: the layer requantizes.

  QuantizeLinear(kiln::QMatMul(...) -> y, s, zp) -> y_q  ->  kiln::QMatMul(..., out_scale=s, out_zp=zp,
                                                                          out_dtype=T) -> y_q
  QuantizeLinear(kiln::QConv(...) -> y, s, zp) -> y_q    ->  kiln::QConv(..., out_scale=s, out_zp=zp,
                                                                        out_dtype=T) -> y_q

Why: int8.py and fp8.py give every quantized layer a float output, so between two quantized
layers the activation is written in float, read back by QuantizeLinear and written again in
T (int8, float8): folded, the layer writes T once and the float tensor never exists.

When: the layer has no requantization yet (out_dtype 0, no out_scale); its float output y is
read by Q alone, once, and is neither a graph output nor captured by a subgraph
(passes/match.py: pinned); Q is per tensor: a constant one-element scale, a zero point absent
or a constant one element, no blocks (or, for kiln::QMatMul, per channel of y's last axis,
the output columns: SmoothQuant's per-channel activation scales); T is an 8-bit integer or float8 type; a float8 Q
saturates (saturate=1), as the fused op always does (integer types saturate either way).
Q's output Value (its name, its readers, a graph output binding) passes to the layer.

Numbers: with v the layer's result before rounding (exact accumulation, float64 epilogue),
  unfused:  Q(fl_F(v)) = RNE(fl_S(fl_F(v) / s)) + zp    F: y's float type; S: Q's precision, else s's type
  folded:                RNE(v / s) + zp                 v / s in float64
For an integer T the folded layer rounds once (float64 aside) where the chain rounds three
times, so the two differ only where v / s lies within a few F-roundings of a half-way point,
and there by one step, the folded result being v / s correctly rounded (the same difference
as kernels/reference/quantized.py's last paragraph states for fused QDQ). For a float8 T both
round v / s through float32 before the float8 rounding (quantized.py's requantize), one
a few roundings apart: again at most one float8 step, near ties only. Saturation is the same.

Run after quantize_layers / quantize_fp8 (compiler/builder.py does, before the precision
policy), on a topologically sorted graph; the layer keeps its name and place.
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.quantize import per_last_axis
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.fuse_qdq import QUANT_OUTPUTS
from kiln.passes.match import const_array, live_ops, pinned, place_inputs, sole_user

QUANTIZED_LAYERS = ("kiln::QMatMul", "kiln::QConv")
# Input index of out_scale (out_zp follows it), the same in QMatMul and QConv.
OUT_SCALE = QMATMUL_INPUTS.index("out_scale")


def fold_requantize(graph: Graph) -> bool:
    """Make each quantized layer whose float output only a per-tensor QuantizeLinear reads write
    that QuantizeLinear's output itself (module docstring); True when any was folded."""
    keep = pinned(graph)
    changed = False
    for node in live_ops(graph, *QUANTIZED_LAYERS):
        changed |= _fold(graph, node, keep)
    return changed


def _fold(graph: Graph, layer: Node, keep: set[int]) -> bool:
    if layer.attrs.get("out_dtype", 0) or layer.input(OUT_SCALE) is not None or len(layer.outputs) != 1:
        return False
    y = layer.outputs[0]
    q = sole_user(y, keep)
    if q is None or q.qualified_op != "QuantizeLinear" or q.input(0) is not y:
        return False
    per_channel = layer.qualified_op == "kiln::QMatMul" and y.shape is not None and per_last_channel(q, y.shape)
    if not (per_tensor(q) or per_channel):
        return False
    y_q = q.outputs[0]
    scale, zp = q.input(1), q.input(2)
    graph.remove_node(q)
    place_inputs(layer, {OUT_SCALE: scale, OUT_SCALE + 1: zp})  # QConv's residual_scale/zp (10, 11) stay
    layer.attrs["out_dtype"] = y_q.dtype.onnx
    take_output(layer, y, y_q)
    return True


def fusable_output(q: Node) -> bool:
    """Q writes a type fused ops write (8-bit integer or saturating float8), without blocks."""
    out = q.outputs[0]
    if q.attrs.get("block_size", 0) or out.dtype is None or out.dtype.name not in QUANT_OUTPUTS:
        return False
    # A non-saturating float8 Q turns overflow into NaN/inf; the fused ops saturate.
    return not (out.dtype.name.startswith("float8") and not q.attrs.get("saturate", 1))


def per_tensor(q: Node) -> bool:
    """Q quantizes per tensor with constant parameters to a type the fused op writes."""
    scale, zp = q.input(1), q.input(2)
    if not fusable_output(q):
        return False
    s = const_array(scale)
    if s is None or s.size != 1 or not scale.dtype.is_float:
        return False
    return zp is None or (zp.is_const and const_array(zp).size == 1)


def per_last_channel(q: Node, shape: tuple) -> bool:
    """Q quantizes per channel of the last axis of a tensor of `shape`, with constant parameters
    (zero point of the scale's shape), to a type fused ops write: SmoothQuant's activation scales."""
    scale, zp = q.input(1), q.input(2)
    s = const_array(scale) if scale is not None else None
    if s is None or not scale.dtype.is_float or not fusable_output(q):
        return False
    z = const_array(zp) if zp is not None else None
    return (per_last_axis(shape, s.shape, int(q.attrs.get("axis", 1)))
            and (zp is None or (z is not None and z.shape == s.shape)))


def take_output(layer: Node, old: Value, new: Value) -> None:
    """`layer` now produces `new` (Q's output, its readers and binding intact); `old` is gone."""
    layer.outputs[0] = new
    new._producer = layer
    old._producer = None

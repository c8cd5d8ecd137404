"""Keep a quantized CNN's residual stream in 8 bits: a kiln::QConv reads its residual quantized.

  kiln::QConv(x_q, ..., residual=r)  ->  kiln::QConv(x_q, ..., residual=r_q, residual_scale=s, residual_zp=zp)
                                         r_q = QuantizeLinear(r, s, zp)

Why: in a calibrated int8/fp8 ResNet the residual r of a bottleneck's last conv is the previous
block's output. precision/int8.py already quantizes it once for the next block's first conv
(one QuantizeLinear per activation, shared by its quantized readers), but the residual add read
it in float, so every block wrote its output in float, a QuantizeLinear kernel read it back and
wrote it again in 8 bits, and the next residual add read the float copy. Once the residual is
read quantized, that QuantizeLinear is the float output's only reader, and fold_requantize (run
next) folds it into the producing layer: each block writes its output once, in 8 bits, and the
residual is read in 8 bits, as TensorRT's int8 ResNets run.

Not exact: the residual is rounded to the activation's 8-bit grid (scale amax / 127 for int8;
amax / 448 and e4m3's 3 mantissa bits for fp8), the rounding the next conv's input takes anyway,
now also on the identity path. The build reports how many residuals it quantized
(build.int8/fp8.residuals_quantized); kiln compare and --accuracy-budget measure the effect, and
a layer precision rule that keeps a conv float keeps its residual float.

When: a QConv reads a float residual r (input 7) without residual_scale, and either
- r already has a per-tensor QuantizeLinear reader to the build's 8-bit type with a positive
  scale (the shared one): the QConv reads its output; or
- r is the float output of a kiln::QConv/QMatMul that does not requantize, every reader of r is
  a QConv reading it as its residual, r is not pinned (graph output, subgraph capture) and has a
  calibrated range amax > 0: a new QuantizeLinear with the scale the quantizer gives an
  activation of that range, which fold_requantize then folds into the producer.
Otherwise (r comes from a float layer) nothing changes: a separate QuantizeLinear kernel would
cost more than reading r in float saves. Explicit QDQ models get the same form from fuse_qdq
(a residual DQ(r_q) is read as r_q), exactly.

Run after quantize_layers / quantize_fp8 and quantize_before_pool, before fold_requantize, on a
topologically sorted graph.
"""
from __future__ import annotations

from typing import Callable, Mapping

from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.quantized import QCONV_INPUTS
from kiln.passes.match import const_array, live_ops, pinned, place_inputs
from kiln.precision import fp8, int8
from kiln.precision.fold_requantize import OUT_SCALE, QUANTIZED_LAYERS, per_tensor

RESIDUAL, RES_SCALE, RES_ZP = (QCONV_INPUTS.index(name) for name in ("residual", "residual_scale", "residual_zp"))
# precision -> (the 8-bit type, how the quantizer makes an activation's QuantizeLinear)
QUANTIZED_TYPES: Mapping[str, tuple[str, Callable[[Graph, Value, float, Node], Value]]] = {
    "int8": ("int8", int8.quantize_input),
    "fp8": ("float8_e4m3fn", fp8.quantize_input),
}


def quantize_residuals(graph: Graph, ranges: Mapping[str, float], precision: str) -> int:
    """Make each QConv whose residual can be read quantized read it so (module docstring); the
    number of QConvs changed."""
    qtype, make_q = QUANTIZED_TYPES[precision]
    keep = pinned(graph)
    changed = 0
    for layer in live_ops(graph, "kiln::QConv"):
        r = layer.input(RESIDUAL)
        if r is None or layer.input(RES_SCALE) is not None or r.dtype is None or not r.dtype.is_float:
            continue
        r_q = _shared_quantize(r, qtype)
        if r_q is None and _foldable(r, keep) and ranges.get(r.name, 0.0) > 0:
            r_q = make_q(graph, r, float(ranges[r.name]), layer)
        if r_q is None:
            continue
        q = r_q.producer()
        place_inputs(layer, {RESIDUAL: r_q, RES_SCALE: q.input(1), RES_ZP: q.input(2)})
        changed += 1
    return changed


def _shared_quantize(r: Value, qtype: str) -> Value | None:
    """The output of a per-tensor QuantizeLinear of r to `qtype` with a positive scale, if r has one."""
    for node, i in r.uses():
        if node.qualified_op != "QuantizeLinear" or i != 0 or not per_tensor(node):
            continue
        out = node.outputs[0]
        if out.dtype is not None and out.dtype.name == qtype and float(const_array(node.input(1)).reshape(-1)[0]) > 0:
            return out
    return None


def _foldable(r: Value, keep: set[int]) -> bool:
    """r is a quantized layer's float output that only QConvs read, as their residual: a QuantizeLinear
    added as its only reader folds into the layer (fold_requantize)."""
    p = r.producer()
    if p is None or p.qualified_op not in QUANTIZED_LAYERS or len(p.outputs) != 1 or id(r) in keep:
        return False
    if p.attrs.get("out_dtype", 0) or p.input(OUT_SCALE) is not None:
        return False
    uses = r.uses()
    return bool(uses) and all(n.qualified_op == "kiln::QConv" and i == RESIDUAL for n, i in uses)

"""Quantize before a MaxPool instead of after it, where the quantized layer feeding the pool can then requantize.

  layer -> y -> MaxPool -> p -> QuantizeLinear(p, s, zp) -> p_q
    ->  layer -> y -> QuantizeLinear(y, s, zp) -> y_q -> MaxPool -> p_q

layer is a kiln::QMatMul / kiln::QConv with a float output. After the swap the QuantizeLinear
reads the layer's output directly, so fold_requantize (run next) makes the layer write y_q
itself: the float activation before the pool is never written, and the pool moves 8-bit
values instead of 16- or 32-bit ones. ResNet's stem is this chain (Conv + Relu, MaxPool 3x3/2,
then the first block's convs): in an int8 engine its float output was 64 x 64 x 112 x 112
fp16 written, pooled in fp16 and quantized after.

Exact: QuantizeLinear with a positive scale is a non-decreasing function (divide by s > 0,
round half to even, add zp, saturate: each step preserves order), and for such a q,
max(q(x_i)) = q(max(x_i)) over any window. The pool's padding (the lowest value) quantizes to
the type's lowest value, which never wins either. NaN aside (an integer Q of NaN is undefined).

When: the layer has no requantization yet and its float output is read by the MaxPool alone;
the MaxPool's Indices output is unused; its output is read by one QuantizeLinear alone, which
fold_requantize could fold (per tensor, constant parameters, an 8-bit or saturating float8
type) with a positive scale; no value involved is a graph output or captured by a subgraph.
The QuantizeLinear node moves: its input becomes y, its output a new value of y's shape; the
MaxPool takes that and produces p_q (name, readers and any graph-output binding kept).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node
from kiln.passes.match import const_array, live_ops, pinned, sole_user
from kiln.precision.fold_requantize import OUT_SCALE, QUANTIZED_LAYERS, per_tensor, take_output


def quantize_before_pool(graph: Graph) -> bool:
    """Swap QuantizeLinear before each MaxPool that a quantized layer feeds (module docstring);
    True when any was swapped."""
    keep = pinned(graph)
    changed = False
    for pool in live_ops(graph, "MaxPool"):
        changed |= _swap(graph, pool, keep)
    return changed


def _swap(graph: Graph, pool: Node, keep: set[int]) -> bool:
    y = pool.input(0)
    layer = None if y is None else y.producer()
    if layer is None or layer.qualified_op not in QUANTIZED_LAYERS or len(layer.outputs) != 1:
        return False
    if layer.attrs.get("out_dtype", 0) or layer.input(OUT_SCALE) is not None or sole_user(y, keep) is not pool:
        return False
    if len(pool.outputs) > 1 and (pool.outputs[1].uses() or id(pool.outputs[1]) in keep):
        return False                                              # Indices are read
    p = pool.outputs[0]
    q = sole_user(p, keep)
    if q is None or q.qualified_op != "QuantizeLinear" or q.input(0) is not p or not per_tensor(q):
        return False
    scale = const_array(q.input(1))
    if not float(scale.reshape(-1)[0]) > 0:
        return False
    p_q = q.outputs[0]
    y_q = graph.value(f"{y.name}_quantized", p_q.dtype, y.shape)
    # Q now reads y and writes y_q; the pool reads y_q and writes p_q.
    q.set_input(0, y)
    take_output(q, p_q, y_q)
    pool.set_input(0, y_q)
    take_output(pool, p, p_q)
    graph.nodes.remove(q)
    graph.nodes.insert(graph.nodes.index(pool), q)
    return True

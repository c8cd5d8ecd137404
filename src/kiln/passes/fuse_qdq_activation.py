"""Fold a quantized Relu into the quantized layer before it.

  Q(Relu(DQ(kiln::QConv|QMatMul(...) -> y_q, p)), p)   ->   kiln::QConv|QMatMul(..., activation=Relu)

Explicitly quantized models whose activations are symmetric int8 (ONNX Runtime's
ActivationSymmetric, or QDQKeepRemovableActivations) cannot leave the Relu to the quantizer's
clamp, so each conv's Relu sits between two Q/DQ pairs of the same parameters p. On the codes
that Relu is max(y_q, zp), and a layer that requantizes with p and applies Relu first writes the
same codes: requantize(relu(v)) = clamp(round(max(v, 0) / s) + zp) = max(requantize(v), zp), as
rounding and clamping are monotonic and 0 maps to zp. So the fold is exact, and the layer (with
its residual, if fuse_qdq_residual folded one: the Relu follows the sum) writes the Relu's codes.

When: the layer requantizes per tensor to int8/uint8 and has no activation; y_q is read only by
the DequantizeLinear, its output only by the Relu, the Relu's only by the QuantizeLinear, each with
the layer's constant scale and zero point (and its type); nothing in between is a graph output.
Run after fuse_qdq_residual (a residual block's Add -> Q -> DQ -> Relu -> Q folds in two steps).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node
from kiln.passes.fuse_qdq import dequantized_codes, output_quantize, same_params
from kiln.passes.match import live_ops, pinned, replace_nodes, sole_user


def fuse_qdq_activation(graph: Graph) -> bool:
    """Fold each Q(Relu(DQ(y_q))) of a quantized layer's own parameters into it (module docstring)."""
    changed = False
    for layer in live_ops(graph, "kiln::QConv", "kiln::QMatMul"):
        changed |= _fold(graph, layer, pinned(graph))
    return changed


def _fold(graph: Graph, layer: Node, keep: set[int]) -> bool:
    start = dequantized_codes(layer, keep)
    if start is None:
        return False
    dq, own = start
    relu = sole_user(dq.outputs[0], keep)
    if relu is None or relu.qualified_op != "Relu":
        return False
    found = output_quantize(relu.outputs[0], keep)
    if found is None or not same_params(found[1], own) or found[0].outputs[0].dtype != layer.outputs[0].dtype:
        return False
    q = found[0]
    replace_nodes(graph, [layer, dq, relu, q], layer.op, list(layer.inputs), {**layer.attrs, "activation": "Relu"},
                  "kiln")
    return True

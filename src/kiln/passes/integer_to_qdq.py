"""ONNX Runtime's dynamic quantization in the Q/DQ form the rest of the pipeline takes.

onnxruntime.quantization.quantize_dynamic (and the dynamic quantizers built on it) write every
MatMul (and, asked to, Conv) with a constant weight as

    a, a_scale, a_zp = DynamicQuantizeLinear(x)         uint8 codes of x, scale and zero point per run
    y = Mul(Cast(MatMulInteger(a, w_q, a_zp, w_zp), to=float), Mul(a_scale, w_scale))
    y = Mul(Cast(ConvInteger(a, w_q, a_zp, w_zp), to=float), Mul(a_scale, w_scale))

the sums (a - a_zp)(w_q - w_zp) exact in int32, times a_scale * w_scale (per tensor, or per
output channel). In real arithmetic that is the float layer on DequantizeLinear(a, a_scale, a_zp)
and DequantizeLinear(w_q, w_scale, w_zp), which this pass writes in its place:

    MatMulInteger -> Cast -> Mul(S)  ->  MatMul(DQ(a, a_scale, a_zp), DQ(w_q, w_scale, w_zp, axis=1))
    ConvInteger -> Cast -> Mul(S)    ->  Conv(DQ(a, a_scale, a_zp), W)     W = (w_q - w_zp) * w_scale, float32

S = Mul(a_scale, w_scale), with a_scale the scale output of the DynamicQuantizeLinear that gave
`a` (either operand order), or S a constant (a_scale 1, w_scale S). fuse_qdq then makes the MatMul
one kiln::QMatMul on int8 tensor cores with the bias add in its epilogue, its a_scale and a_zp
read on the device at run time (attribute dynamic); the Conv runs as a float conv in the
engine's precision on the dequantized input. Left alone, the integer ops run on the reference
(float64 products), and in a 16-bit engine the Cast of their int32 sums to the engine's float type
overflows float16 (NaN out).

Conditions: w_q a constant int8/uint8 (MatMul: 2-D) whose scale and zero point are one value or
one per output channel (MatMul: a vector of N; Conv: M values along the output's channel axis);
`a` int8/uint8 with a zero point of one value; the Cast (to float32) the sums' only reader and the
Mul the Cast's; S float32. Anything else stays as it is. Runs before fuse_qdq.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.quantize import dequantize_linear
from kiln.passes.match import const_array, live_nodes, next_node, other_input, pinned, produced_by, sole_user

CODES = dtypes.CODE_NAMES


def integer_to_qdq(graph: Graph) -> bool:
    """Rewrite every MatMulInteger / ConvInteger -> Cast -> Mul that the module docstring describes."""
    changed = False
    keep = pinned(graph)
    for node in live_nodes(graph, "MatMulInteger", "ConvInteger"):
        changed |= _rewrite(graph, node, keep)
    return changed


def _per_channel(v: Value | None, n: int, conv: bool) -> bool:
    """A constant of one value, or of n along the output channel: a vector (MatMul's columns), or
    [n, 1, ...] after leading ones (a conv output's channel axis)."""
    arr = const_array(v)
    if arr is None or arr.size not in (1, n):
        return False
    if arr.size == 1:
        return True
    dims = list(arr.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return dims[0] == n and (all(d == 1 for d in dims[1:]) if conv else len(arr.shape) == 1)


def _scales(graph: Graph, a: Value, s: Value, n: int, conv: bool) -> tuple[Value, Value] | None:
    """(a_scale, w_scale) whose product is S (module docstring), or None."""
    if s.dtype is None or s.dtype.name != "float32":
        return None
    if _per_channel(s, n, conv):
        return graph.constant(np.array(1.0, np.float32), "a_scale_one"), s
    mul, dql = produced_by(s, "Mul"), produced_by(a, "DynamicQuantizeLinear")
    if mul is None or dql is None or len(dql.outputs) < 3:
        return None
    a_scale = dql.outputs[1]
    w_scale = other_input(mul, a_scale)
    if w_scale is None or not _per_channel(w_scale, n, conv) or w_scale.dtype != s.dtype:
        return None
    return a_scale, w_scale


def _vector(graph: Graph, v: Value | None, n: int) -> Value | None:
    """A one-value or per-channel constant as [n] (DequantizeLinear's per-axis parameters)."""
    if v is None:
        return None
    arr = const_array(v)
    return graph.constant(np.broadcast_to(arr.reshape(-1), (n,)).copy(), f"{v.name}_channels")


def _rewrite(graph: Graph, node: Node, keep: set[int]) -> bool:
    a, w, a_zp, w_zp = (list(node.inputs) + [None] * 4)[:4]
    conv = node.op == "ConvInteger"
    arr = const_array(w)
    if a is None or arr is None or (arr.ndim < 3 if conv else arr.ndim != 2) or w.dtype is None \
            or w.dtype.name not in CODES or a.dtype is None or a.dtype.name not in CODES:
        return False
    n = int(arr.shape[0] if conv else arr.shape[1])
    if a_zp is not None and (a_zp.shape is None or int(np.prod(a_zp.shape)) != 1):
        return False
    if w_zp is not None and not _per_channel(w_zp, n, False):
        return False
    cast = sole_user(node.outputs[0], keep)
    if cast is None or cast.op != "Cast" or int(cast.attrs.get("to", 0)) != TensorProto.FLOAT:
        return False
    mul = sole_user(cast.outputs[0], keep)
    s = other_input(mul, cast.outputs[0]) if mul is not None and mul.op == "Mul" else None
    scales = None if s is None else _scales(graph, a, s, n, conv)
    if scales is None:
        return False
    a_scale, w_scale = scales
    per_channel = any(const_array(v).size != 1 for v in (w_scale, w_zp) if v is not None)
    if per_channel:   # DequantizeLinear's per-axis scale and zero point share a shape
        w_scale, w_zp = _vector(graph, w_scale, n), _vector(graph, w_zp, n)
    after = next_node(graph, mul)
    graph.remove_nodes([node, cast, mul])
    a_f = graph.value(f"{node.name}_a", a_scale.dtype, a.shape)
    graph.add_node(Node("DequantizeLinear", [a, a_scale, a_zp], [a_f], {},
                        name=graph.unique_name(f"{node.name}_dequantize_a")), before=after)
    if conv:   # the float weight, dequantized here by the reference op (along the output channels)
        params = [None if v is None else torch.from_numpy(np.asarray(const_array(v))) for v in (w_scale, w_zp)]
        weight = dequantize_linear(torch.from_numpy(np.asarray(arr)), *params, axis=0)
        inputs = [a_f, graph.constant(weight.numpy(), f"{w.name}_dequantized")]
        graph.add_node(Node("Conv", inputs, [mul.outputs[0]], dict(node.attrs), name=graph.unique_name(node.name)),
                       before=after)
        return True
    w_f = graph.value(f"{node.name}_w", w_scale.dtype, w.shape)
    graph.add_node(Node("DequantizeLinear", [w, w_scale, w_zp], [w_f], {"axis": 1} if per_channel else {},
                        name=graph.unique_name(f"{node.name}_dequantize_w")), before=after)
    graph.add_node(Node("MatMul", [a_f, w_f], [mul.outputs[0]], {}, name=graph.unique_name(node.name)),
                   before=after)
    return True

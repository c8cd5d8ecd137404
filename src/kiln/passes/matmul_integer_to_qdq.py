"""ONNX Runtime's dynamic quantization in the Q/DQ form that fuse_qdq turns into a kiln::QMatMul.

onnxruntime.quantization.quantize_dynamic (and the dynamic quantizers built on it) write every
MatMul with a constant weight as

    a, a_scale, a_zp = DynamicQuantizeLinear(x)         uint8 codes of x, scale and zero point per run
    y = Mul(Cast(MatMulInteger(a, w_q, a_zp, w_zp), to=float), Mul(a_scale, w_scale))

the sums (a - a_zp)(w_q - w_zp) exact in int32, times a_scale * w_scale (per tensor, or per
column with per_channel). That is MatMul(DequantizeLinear(a, a_scale, a_zp),
DequantizeLinear(w_q, w_scale, w_zp)), which this pass writes in its place:

    MatMulInteger -> Cast -> Mul(S)   ->   MatMul(DQ(a, a_scale, a_zp), DQ(w_q, w_scale, w_zp, axis=1))

S = Mul(a_scale, w_scale), with a_scale the scale output of the DynamicQuantizeLinear that gave
`a` (either operand order), or S a constant (one value or one per column: a_scale 1, w_scale S).
fuse_qdq then makes it one kiln::QMatMul on int8 tensor cores with the bias add after it in its
epilogue, its a_scale and a_zp read on the device at run time (`dynamic`). Left alone,
MatMulInteger runs on the reference (float64 products), and in a 16-bit engine the Cast of its
int32 sums to the engine's float type overflows float16 (NaN out).

Conditions: w_q a constant 2-D int8/uint8 with a zero point of one value or one per column; a
int8/uint8 with a zero point of one value; the Cast (to float32) the sums' only reader and the Mul
the Cast's; S float32. Anything else stays as it is. Runs before fuse_qdq.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import const_array, live_nodes, next_node, other_input, pinned, produced_by, sole_user

CODES = ("int8", "uint8")


def matmul_integer_to_qdq(graph: Graph) -> bool:
    """Rewrite every MatMulInteger -> Cast -> Mul that the module docstring describes."""
    changed = False
    keep = pinned(graph)
    for node in live_nodes(graph, "MatMulInteger"):
        changed |= _rewrite(graph, node, keep)
    return changed


def _one_or_per_column(v: Value | None, n: int) -> bool:
    arr = const_array(v)
    return arr is not None and arr.size in (1, n) and (arr.size == 1 or arr.ndim == 1)


def _scales(graph: Graph, a: Value, s: Value, n: int) -> tuple[Value, Value] | None:
    """(a_scale, w_scale) whose product is S (module docstring), or None."""
    if s.dtype is None or s.dtype.name != "float32":
        return None
    if _one_or_per_column(s, n):
        return graph.constant(np.array(1.0, np.float32), "a_scale_one"), s
    mul, dql = produced_by(s, "Mul"), produced_by(a, "DynamicQuantizeLinear")
    if mul is None or dql is None or len(dql.outputs) < 3:
        return None
    a_scale = dql.outputs[1]
    w_scale = other_input(mul, a_scale)
    if w_scale is None or not _one_or_per_column(w_scale, n) or w_scale.dtype != s.dtype:
        return None
    return a_scale, w_scale


def _alike(graph: Graph, w_scale: Value, w_zp: Value | None, n: int) -> tuple[Value, Value | None]:
    """The weight's scale and zero point both [N] where either is per column (DequantizeLinear's
    parameters share a shape), else as they are."""
    arrays = [const_array(v) for v in (w_scale, w_zp) if v is not None]
    if all(a.size == 1 for a in arrays):
        return w_scale, w_zp
    scale, zp = (None if v is None else np.broadcast_to(const_array(v).reshape(-1), (n,)).copy() for v in (w_scale, w_zp))
    return graph.constant(scale, f"{w_scale.name}_columns"), None if zp is None else graph.constant(zp, f"{w_zp.name}_columns")


def _rewrite(graph: Graph, node: Node, keep: set[int]) -> bool:
    a, w, a_zp, w_zp = (list(node.inputs) + [None] * 4)[:4]
    arr = const_array(w)
    if a is None or arr is None or arr.ndim != 2 or w.dtype is None or w.dtype.name not in CODES \
            or a.dtype is None or a.dtype.name not in CODES:
        return False
    n = int(arr.shape[1])
    if a_zp is not None and (a_zp.shape is None or int(np.prod(a_zp.shape)) != 1):
        return False
    if w_zp is not None and not _one_or_per_column(w_zp, n):
        return False
    cast = sole_user(node.outputs[0], keep)
    if cast is None or cast.op != "Cast" or int(cast.attrs.get("to", 0)) != TensorProto.FLOAT:
        return False
    mul = sole_user(cast.outputs[0], keep)
    s = other_input(mul, cast.outputs[0]) if mul is not None and mul.op == "Mul" else None
    scales = None if s is None else _scales(graph, a, s, n)
    if scales is None:
        return False
    w_scale, w_zp = _alike(graph, scales[1], w_zp, n)
    per_column = int(np.prod(w_scale.shape or (1,))) != 1
    after = next_node(graph, mul)
    graph.remove_nodes([node, cast, mul])
    a_f = graph.value(f"{node.name}_a", scales[0].dtype, a.shape)
    w_f = graph.value(f"{node.name}_w", scales[1].dtype, w.shape)
    graph.add_node(Node("DequantizeLinear", [a, scales[0], a_zp], [a_f], {},
                        name=graph.unique_name(f"{node.name}_dequantize_a")), before=after)
    graph.add_node(Node("DequantizeLinear", [w, w_scale, w_zp], [w_f], {"axis": 1} if per_column else {},
                        name=graph.unique_name(f"{node.name}_dequantize_w")), before=after)
    graph.add_node(Node("MatMul", [a_f, w_f], [mul.outputs[0]], {}, name=graph.unique_name(node.name)),
                   before=after)
    return True

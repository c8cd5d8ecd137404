"""Gather from a dequantized table -> dequantize the gathered rows.

    Gather(DequantizeLinear(codes, s, zp), idx)  ->  DequantizeLinear(Gather(codes, idx), s, zp)

for a per-tensor DequantizeLinear (scalar scale and zero point) of int8/uint8 codes: every
element is dequantized alike, so the order does not change a value. ONNX Runtime's QDQ models
quantize embedding tables; a table too large to fold into a float constant (BERT-base's 30522 x 768 words: 94 MB in
float32) would otherwise be dequantized whole on every run (~19 us on an H200) to read a few
thousand rows of it. Gathered first, the dequantization touches only the rows read and joins the
element-wise work after it. The original DequantizeLinear stays for any other reader (dead code
elimination drops it otherwise). Runs before the Q/DQ fusions.
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.passes.match import const_array, live_nodes, next_node, produced_by

CODES = dtypes.CODE_NAMES   # 4-bit codes pack two to a byte; float8 tables are not what this is for


def gather_before_dequantize(graph: Graph) -> bool:
    """Rewrite every Gather of a per-tensor dequantized tensor; True if any was rewritten."""
    changed = False
    for node in live_nodes(graph, "Gather"):
        changed |= _rewrite(graph, node)
    return changed


def _per_tensor(dq: Node) -> bool:
    scale, zp = dq.input(1), dq.input(2)
    s = const_array(scale)
    if s is None or s.size != 1:
        return False
    return zp is None or (zp.is_const and const_array(zp).size == 1)


def _rewrite(graph: Graph, node: Node) -> bool:
    dq = produced_by(node.input(0), "DequantizeLinear")
    if dq is None or not _per_tensor(dq) or node.input(1) is None:
        return False
    codes, idx, out = dq.input(0), node.input(1), node.outputs[0]
    if codes is None or codes.dtype is None or codes.dtype.name not in CODES or out.dtype != dq.outputs[0].dtype:
        return False
    after = next_node(graph, node)
    graph.remove_node(node)
    rows = graph.value(f"{node.name}_codes", codes.dtype, out.shape)
    graph.add_node(Node("Gather", [codes, idx], [rows], dict(node.attrs), name=graph.unique_name(node.name)),
                   before=after)
    graph.add_node(Node("DequantizeLinear", [rows, *dq.inputs[1:]], [out], dict(dq.attrs),
                        name=graph.unique_name(f"{node.name}_dequantize")), before=after)
    return True

"""DynamicQuantizeLinear read only by int8 GEMMs -> kiln::DynamicQuantize: its codes as int8.

DynamicQuantizeLinear writes uint8 codes y and a uint8 zero point z. A kiln::QMatMul reading
them (dynamic=1, from integer_to_qdq and fuse_qdq) sums (y - z)(w - w_z): the same sums come from
y - 128 and z - 128, which are int8. kiln::DynamicQuantize writes those (one subtraction in its
kernel), so that the GEMM reads int8 x int8 codes: the form its TMA kernels take (a uint8 A takes
the other kernel, which flips the top bit of every element it loads). Applies where every reader
of the codes and of the zero point is such a QMatMul reading them as A and a_zp; the scale output
keeps its Value (and its readers). Runs after merge_parallel_matmuls.
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.match import live_nodes, next_node, pinned

A, A_ZP = QMATMUL_INPUTS.index("a_q"), QMATMUL_INPUTS.index("a_zp")
INT8 = dtypes.BY_NAME["int8"]


def signed_dynamic_codes(graph: Graph) -> bool:
    """Rewrite every DynamicQuantizeLinear the module docstring describes."""
    changed = False
    keep = pinned(graph)
    for node in live_nodes(graph, "DynamicQuantizeLinear"):
        changed |= _rewrite(graph, node, keep)
    return changed


def _read_as(node: Node, index: int, keep: set[int]) -> bool:
    """Output `index` of `node` is read only by dynamic kiln::QMatMuls, at input A (codes) or
    A_ZP (zero point)."""
    out = node.outputs[index]
    if id(out) in keep:
        return False
    want = A if index == 0 else A_ZP
    return all(user.qualified_op == "kiln::QMatMul" and user.attrs.get("dynamic") and slot == want
               for user, slot in out.uses())


def _rewrite(graph: Graph, node: Node, keep: set[int]) -> bool:
    if len(node.outputs) != 3 or not node.outputs[0].uses() or not _read_as(node, 0, keep) \
            or not _read_as(node, 2, keep):
        return False
    codes, scale, zp = node.outputs
    signed = [graph.value(f"{codes.name}_signed", INT8, codes.shape), scale,
              graph.value(f"{zp.name}_signed", INT8, zp.shape)]
    readers = {id(v): list(v.uses()) for v in (codes, zp)}
    inputs, after = list(node.inputs), next_node(graph, node)
    graph.remove_node(node)
    new = Node("DynamicQuantize", inputs, signed, {}, name=graph.unique_name(node.name), domain="kiln")
    new.fused_from = node.fused_from or (node.name,)
    graph.add_node(new, before=after)
    for old, value in ((codes, signed[0]), (zp, signed[2])):
        for user, slot in readers[id(old)]:
            user.set_input(slot, value)
    return True

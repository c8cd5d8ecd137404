"""Recognise Softmax written out.

  e = Exp(x - ReduceMax(x, [a]))  (or Exp(x))
  e / ReduceSum(e, [a])                       -> Softmax(x, axis=a)
Both reductions keep dims and reduce the same single axis. Subtracting the max only
guards against overflow, so the unguarded form is the same function. Intermediates
must be read only inside the pattern. Run fold_constants first (axes are constants).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import live_nodes, norm_axes, only_read_by, pinned, produced_by, rank, reduce_axes, replace_nodes


def fuse_softmax(graph: Graph) -> bool:
    """Replace each written-out softmax (see module docstring) by Softmax."""
    keep = pinned(graph)
    changed = False
    for div in live_nodes(graph, "Div"):
        changed |= _try(graph, div, keep)
    return changed


def _axis(node: Node, x: Value) -> int | None:
    axes = reduce_axes(node)
    if axes is None or len(axes) != 1 or not node.attrs.get("keepdims", 1):
        return None
    norm = norm_axes(axes, rank(x))
    return None if norm is None else norm[0]


def _try(graph: Graph, div: Node, keep: set[int]) -> bool:
    e, s = div.input(0), div.input(1)
    exp, total = produced_by(e, "Exp"), produced_by(s, "ReduceSum")
    if exp is None or total is None or total.input(0) is not e:
        return False
    x, nodes = exp.input(0), [exp, total, div]
    sub = produced_by(x, "Sub")
    top = produced_by(sub.input(1), "ReduceMax") if sub is not None else None
    if top is not None and top.input(0) is sub.input(0):
        x, nodes = sub.input(0), [top, sub, *nodes]
        if _axis(top, x) is None or _axis(top, x) != _axis(total, x):
            return False
    axis = _axis(total, x)
    if axis is None or not all(only_read_by(n.outputs[0], nodes, keep) for n in nodes[:-1]):
        return False
    replace_nodes(graph, nodes, "Softmax", [x], {"axis": axis})
    return True

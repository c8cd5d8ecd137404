"""Recognise Gelu written out with Erf or Tanh.

  0.5 * x * (1 + Erf(x / sqrt(2)))                               -> Gelu(x)
  0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))        -> Gelu(x, approximate="tanh")
x / sqrt(2) may be x * (1/sqrt(2)); x^3 may be Pow(x, 3), x*(x*x) or (x*x)*x; the three
factors 0.5, x and (1 + ...) may be multiplied in any order. Every intermediate must be
read only inside the pattern. Run fold_constants first (the literals must be constants).
"""
from __future__ import annotations

import math

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import (is_close, live_nodes, only_read_by, other_input, pinned, produced_by,
                               replace_nodes, scalar_const, sole_user)


def fuse_gelu(graph: Graph) -> bool:
    """Replace each written-out Gelu (see module docstring) by the Gelu op."""
    keep = pinned(graph)
    changed = False
    for node in live_nodes(graph, "Erf", "Tanh"):
        found = _erf_form(node) if node.op == "Erf" else _tanh_form(node) if node.op == "Tanh" else None
        if found is not None:
            x, inner, approximate = found
            changed |= _finish(graph, x, inner, node, approximate, keep)
    return changed


def _scaled_by(v: Value, factor: float) -> tuple[Node, Value] | None:
    """(node, x) when v = x * factor or x / (1 / factor)."""
    node = produced_by(v, "Mul", "Div")
    if node is None:
        return None
    for x, c in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
        value = scalar_const(c)
        if value is not None and (is_close(value, factor) if node.op == "Mul" else is_close(1 / value, factor)):
            return node, x
        if node.op == "Div":
            break  # c / x is not a scaling of x
    return None


def _erf_form(erf: Node) -> tuple[Value, list[Node], str] | None:
    found = _scaled_by(erf.input(0), 1 / math.sqrt(2))
    return None if found is None else (found[1], [found[0], erf], "none")


def _cube(v: Value, x: Value) -> list[Node] | None:
    node = produced_by(v, "Pow", "Mul")
    if node is None:
        return None
    if node.op == "Pow":
        return [node] if node.input(0) is x and scalar_const(node.input(1)) == 3.0 else None
    sq = produced_by(other_input(node, x), "Mul") if other_input(node, x) is not None else None
    return [sq, node] if sq is not None and sq.input(0) is x and sq.input(1) is x else None


def _tanh_form(tanh: Node) -> tuple[Value, list[Node], str] | None:
    outer = _scaled_by(tanh.input(0), math.sqrt(2 / math.pi))
    add = produced_by(outer[1], "Add") if outer else None
    if add is None:
        return None
    for x, term in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        cubic = _scaled_by(term, 0.044715)
        cube = _cube(cubic[1], x) if cubic else None
        if cube is not None:
            return x, [*cube, cubic[0], add, outer[0], tanh], "tanh"
    return None


def _finish(graph: Graph, x: Value, inner: list[Node], fn: Node, approximate: str, keep: set[int]) -> bool:
    """Match 1 + fn(...) and its product with x and 0.5; replace the whole pattern."""
    one = sole_user(fn.outputs[0], keep)
    if one is None or one.op != "Add" or scalar_const(other_input(one, fn.outputs[0])) != 1.0:
        return False
    p = one.outputs[0]
    m1 = sole_user(p, keep)
    if m1 is None or m1.op != "Mul" or other_input(m1, p) is None:
        return False
    f = other_input(m1, p)
    half = produced_by(f, "Mul")
    if half is not None and _is_half(other_input(half, x)):
        tail = [half, m1]                            # (0.5 * x) * p
    elif f is x or _is_half(f):
        m2 = sole_user(m1.outputs[0], keep)          # (x * p) * 0.5 or (0.5 * p) * x
        want = (lambda c: _is_half(c)) if f is x else (lambda c: c is x)
        if m2 is None or m2.op != "Mul" or not want(other_input(m2, m1.outputs[0])):
            return False
        tail = [m1, m2]
    else:
        return False
    nodes = [*inner, one, *tail]
    if not all(only_read_by(n.outputs[0], nodes, keep) for n in nodes[:-1]):
        return False
    attrs = {"approximate": "tanh"} if approximate == "tanh" else {}
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    replace_nodes(graph, sorted(nodes, key=lambda n: order[id(n)]), "Gelu", [x], attrs)
    return True


def _is_half(v: Value | None) -> bool:
    return v is not None and scalar_const(v) == 0.5

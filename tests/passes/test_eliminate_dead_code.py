from __future__ import annotations

from graphs import Builder, check_pass, ops
from kiln.ir import Graph
from kiln.passes.eliminate_dead_code import eliminate_dead_code


def test_removes_unreachable_chain():
    b = Builder()
    x = b.input("x", (3,))
    dead = b.op("Exp", b.op("Neg", x))
    b.op("Abs", dead)
    b.output(b.op("Sqrt", b.op("Abs", x)))
    assert check_pass(eliminate_dead_code, b)
    assert ops(b.graph) == {"Abs": 1, "Sqrt": 1}


def test_keeps_node_with_one_live_output_and_everything_live():
    b = Builder()
    x = b.input("x", (4,))
    parts = b.op("Split", x, b.const([2, 2], dtype="int64"), n_outputs=2)
    b.output(b.op("Neg", parts[0]))
    assert not check_pass(eliminate_dead_code, b)
    assert ops(b.graph) == {"Split": 1, "Neg": 1}


def test_keeps_values_captured_by_subgraph():
    b = Builder()
    x = b.input("x", (2,))
    captured = b.op("Neg", x)
    body = Graph("then")
    body.outer[captured.name] = captured.__class__(captured.name, captured.dtype, captured.shape)
    g = b.graph
    node = g.make_node("If", [b.const(True, dtype="bool")], attrs={"then_branch": body, "else_branch": body})
    g.outputs.append(node.outputs[0])
    assert not eliminate_dead_code(g)
    assert ops(g) == {"Neg": 1, "If": 1}

from __future__ import annotations

import json

from graphs import Builder, check_pass, ops
from kiln.ir.dtypes import FLOAT16
from kiln.passes.fuse_pointwise import fuse_pointwise


def test_chain_with_broadcast_scalar_and_tensor_constants():
    b = Builder()
    x = b.input("x", (2, 3))
    y = b.input("y", (3,))
    t = b.op("Mul", b.op("Add", x, y), b.const(0.5))
    t = b.op("Clip", t, b.const(-1.0), b.const(1.0))
    t = b.op("Cast", b.op("Sub", t, b.rand(2, 3)), to=FLOAT16.onnx)
    g = b.output(t)
    assert check_pass(fuse_pointwise, b)
    assert ops(g) == {"kiln::Pointwise": 1}
    node = g.nodes[0]
    assert node.outputs[0] is t and node.inputs[:2] == (x, y) and len(node.inputs) == 3
    program = node.attrs["program"]
    assert [ins[0] for ins in program] == ["Add", "Mul", "Clip", "Sub", "Cast"]
    assert program[1][1] == ["t0", {"const": 0.5, "dtype": "float32"}]
    json.dumps(node.attrs)


def test_tree_with_shared_input_and_where():
    b = Builder()
    x = b.input("x", (4,))
    s = b.op("Sigmoid", x)
    y = b.op("Where", b.op("Greater", x, b.const(0.0)), b.op("Mul", x, s), b.op("Neg", s))
    g = b.output(y)
    assert check_pass(fuse_pointwise, b)
    assert ops(g) == {"kiln::Pointwise": 1} and g.nodes[0].inputs == (x,)


def test_stops_at_shared_values_outputs_and_other_ops():
    b = Builder()
    x = b.input("x", (2, 4))
    a = b.op("Exp", b.op("Neg", x))                   # group 1
    m = b.op("MatMul", a, b.rand(4, 4))               # not element-wise
    c = b.op("Relu", b.op("Add", m, b.const(1.0)))    # group 2
    d = b.op("Abs", c)                                # c is also an output: Abs alone
    g = b.output(c, d)
    assert check_pass(fuse_pointwise, b)
    assert ops(g) == {"kiln::Pointwise": 2, "MatMul": 1, "Abs": 1}


def test_single_ops_are_left():
    b = Builder()
    x = b.input("x", (2, 4))
    g = b.output(b.op("Relu", b.op("MatMul", b.op("Neg", x), b.rand(4, 4))))
    assert not check_pass(fuse_pointwise, b)
    assert ops(g) == {"Neg": 1, "MatMul": 1, "Relu": 1}

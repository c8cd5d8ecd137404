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


def _residual_add(b, code: str, **q_attrs):
    """ONNX Runtime's QDQ residual add: Q(DQ(a) + DQ(r))."""
    a, r = b.input("a", (2, 4, 3, 3), code), b.input("r", (2, 4, 3, 3), code)
    zp = b.const(7, dtype=code)
    s = b.op("Add", b.op("DequantizeLinear", a, b.const(0.05), zp), b.op("DequantizeLinear", r, b.const(0.02), zp))
    return a, r, b.op("QuantizeLinear", s, b.const(0.1), b.const(3, dtype=code), **q_attrs)


def test_per_tensor_quantize_ops_join_a_group():
    b = Builder()
    a, r, y = _residual_add(b, "uint8")
    g = b.output(y)
    assert check_pass(fuse_pointwise, b)
    assert ops(g) == {"kiln::Pointwise": 1}
    node = g.nodes[0]
    assert node.inputs == (a, r) and node.outputs[0] is y
    program = node.attrs["program"]
    assert [ins[0] for ins in program] == ["DequantizeLinear", "DequantizeLinear", "Add", "QuantizeLinear"]
    assert program[0][1] == ["i0", {"const": 0.05000000074505806, "dtype": "float32"}, {"const": 7, "dtype": "uint8"}]


def test_a_lone_dequantize_is_a_program_of_one():
    b = Builder()                      # a quantized layer's codes on their way to a float op
    x = b.input("x", (2, 4), "uint8")
    d = b.op("DequantizeLinear", x, b.const(0.5), b.const(9, dtype="uint8"))
    g = b.output(b.op("MatMul", d, b.rand(4, 4)))
    assert check_pass(fuse_pointwise, b)
    assert ops(g) == {"kiln::Pointwise": 1, "MatMul": 1}
    program = g.nodes[0].attrs["program"]
    assert [ins[0] for ins in program] == ["DequantizeLinear"] and g.nodes[0].inputs == (x,)
    b = Builder()                      # a lone QuantizeLinear keeps its own kernel
    x = b.input("x", (2, 4), "float32")
    g = b.output(b.op("QuantizeLinear", b.op("MatMul", x, b.rand(4, 4)), b.const(0.5), b.const(9, dtype="uint8")))
    assert not check_pass(fuse_pointwise, b)
    assert ops(g) == {"MatMul": 1, "QuantizeLinear": 1}


def test_quantize_ops_that_are_not_per_tensor_bytes_stay():
    b = Builder()                      # float8 codes: not an 8-bit integer type
    x = b.input("x", (2, 4), "float32")
    q = b.op("QuantizeLinear", b.op("Relu", x), b.const(0.1), output_dtype=17)
    g = b.output(q)
    fuse_pointwise(g)
    assert ops(g) == {"Relu": 1, "QuantizeLinear": 1}
    b = Builder()                      # per-channel scale
    x = b.input("x", (2, 4), "int8")
    d = b.op("DequantizeLinear", x, b.const([0.1, 0.2, 0.3, 0.4]), axis=1)
    g = b.output(b.op("Relu", d))
    fuse_pointwise(g)
    assert ops(g) == {"Relu": 1, "DequantizeLinear": 1}

from __future__ import annotations

import numpy as np

from graphs import Builder, check_pass, ops
from kiln.ir.dtypes import FLOAT32
from kiln.passes.eliminate_noops import eliminate_noops


def test_identity_dropout_cast_same_dtype():
    b = Builder()
    x = b.input("x", (2, 3))
    y = b.op("Identity", x)
    y = b.op("Dropout", y)
    y = b.op("Cast", y, to=FLOAT32.onnx)
    b.output(b.op("Neg", y))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Neg": 1}
    assert b.graph.nodes[0].input(0).name == "x"


def test_neutral_constants():
    b = Builder()
    x = b.input("x", (2, 3))
    y = b.op("Add", x, b.const(0.0))
    y = b.op("Mul", b.const([1.0, 1.0, 1.0]), y)
    y = b.op("Sub", y, b.const(0.0))
    y = b.op("Div", y, b.const([[1.0]]))
    b.output(b.op("Neg", y))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Neg": 1}


def test_neutral_constant_that_broadcasts_or_is_on_the_left_of_sub_is_kept():
    b = Builder()
    x = b.input("x", (3,))
    y = b.op("Add", x, b.const(np.zeros((2, 3))))  # grows the shape
    z = b.op("Sub", b.const(0.0), x)                # 0 - x is -x
    w = b.op("Mul", x, b.const(2.0))
    b.output(y, z, w)
    assert not check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Add": 1, "Sub": 1, "Mul": 1}


def test_graph_output_keeps_name_when_noop_produces_it():
    b = Builder()
    x = b.input("x", (2, 3))
    y = b.op("Identity", b.op("Neg", x))
    out = y
    g = b.output(y)
    assert check_pass(eliminate_noops, b)
    assert ops(g) == {"Neg": 1} and g.outputs[0] is out and g.nodes[0].outputs[0] is out


def test_identity_from_input_to_output_is_kept():
    b = Builder()
    x = b.input("x", (2, 3))
    b.output(b.op("Identity", x))
    assert not check_pass(eliminate_noops, b)


def test_transposes_compose_and_cancel():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    t = b.op("Transpose", b.op("Transpose", x, perm=[1, 0, 2]), perm=[2, 0, 1])
    b.output(b.op("Neg", t))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Transpose": 1, "Neg": 1}
    assert b.graph.nodes[0].input(0) is x

    b = Builder()
    x = b.input("x", (2, 3, 4))
    t = b.op("Transpose", b.op("Transpose", x, perm=[0, 2, 1]), perm=[0, 2, 1])
    t = b.op("Transpose", t, perm=[0, 1, 2])
    b.output(b.op("Neg", t))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Neg": 1}


def test_reshape_expand_to_same_shape_and_reshape_chains():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    y = b.op("Reshape", x, b.const([2, 3, 4], dtype="int64"))
    y = b.op("Expand", y, b.const([1, 4], dtype="int64"))
    y = b.op("Reshape", b.op("Flatten", y, axis=1), b.const([6, -1], dtype="int64"))
    b.output(b.op("Neg", y))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Reshape": 1, "Neg": 1}
    assert b.graph.nodes[0].input(0) is x


def test_reshape_with_copy_dim_is_not_collapsed():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    y = b.op("Reshape", b.op("Reshape", x, b.const([3, 2, 4], dtype="int64")), b.const([0, -1], dtype="int64"))
    b.output(y)
    assert not check_pass(eliminate_noops, b)


def test_squeeze_unsqueeze_pairs_cancel():
    b = Builder()
    x = b.input("x", (2, 1, 3))
    y = b.op("Unsqueeze", b.op("Squeeze", x, b.const([1], dtype="int64")), b.const([-2], dtype="int64"))
    z = b.op("Squeeze", b.op("Unsqueeze", y, b.const([0], dtype="int64")), b.const([0], dtype="int64"))
    b.output(b.op("Neg", z))
    assert check_pass(eliminate_noops, b)
    assert ops(b.graph) == {"Neg": 1}


def test_squeeze_unsqueeze_on_other_axes_is_kept():
    b = Builder()
    x = b.input("x", (2, 1, 3))
    y = b.op("Unsqueeze", b.op("Squeeze", x, b.const([1], dtype="int64")), b.const([0], dtype="int64"))
    b.output(y)
    assert not check_pass(eliminate_noops, b)

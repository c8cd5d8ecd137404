from __future__ import annotations

import numpy as np
from graphs import Builder, check_pass, ops
from kiln.ir import Value, verify
from kiln.ir.dtypes import FLOAT32
from kiln.passes import fold_constants as fc
from kiln.passes.fold_constants import fold_constants


def test_folds_constant_subexpression_keeps_input_path():
    b = Builder()
    x = b.input("x", (2, 3))
    w = b.op("Add", b.rand(2, 3), b.const(1.0))
    y = b.op("Mul", x, b.op("Sqrt", b.op("Abs", w)))
    b.output(y)
    assert check_pass(fold_constants, b)
    assert ops(b.graph) == {"Mul": 1}
    assert b.graph.nodes[0].input(1).is_const


def test_folded_graph_output_keeps_its_name():
    b = Builder()
    b.input("x", (2,))
    y = b.op("Neg", b.const([1.0, 2.0]))
    g = b.output(y)
    assert check_pass(fold_constants, b)
    assert g.nodes == [] and g.outputs[0] is y and y.is_const


def test_shape_of_static_value():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    s = b.op("Shape", x, start=1)
    y = b.op("Reshape", x, b.op("Concat", b.const([-1], dtype="int64"), s, axis=0))
    b.output(y)
    assert check_pass(fold_constants, b)
    assert ops(b.graph) == {"Reshape": 1}
    np.testing.assert_array_equal(np.asarray(b.graph.nodes[0].input(1).const), [-1, 3, 4])


def test_shape_with_symbolic_dim_is_kept_but_gathered_static_dim_folds():
    b = Builder()
    x = b.input("x", (2, 3))
    x.shape = ("batch", 3)
    s = b.op("Shape", x)
    b.graph.nodes[-1].outputs[0].shape = (2,)
    gather = b.graph.make_node("Gather", [s, b.const(1, dtype="int64")], attrs={"axis": 0})
    gather.outputs[0].dtype = s.dtype
    gather.outputs[0].shape = ()
    b.output(s, gather.outputs[0])
    assert fold_constants(b.graph)
    verify(b.graph)
    assert ops(b.graph) == {"Shape": 1}
    assert int(np.asarray(b.graph.outputs[1].const)) == 3


def test_size_of_static_value():
    b = Builder()
    x = b.input("x", (2, 5))
    b.output(b.op("Size", x))
    assert check_pass(fold_constants, b)
    assert int(np.asarray(b.graph.outputs[0].const)) == 10


def test_does_not_fold_blow_up(monkeypatch):
    monkeypatch.setattr(fc, "MAX_FOLDED_BYTES", 1024)
    b = Builder()
    x = b.input("x", (64, 64))
    big = b.op("ConstantOfShape", b.const([64, 64], dtype="int64"), value=np.array([1.0], np.float32))
    b.output(b.op("Add", x, big))
    assert not check_pass(fold_constants, b)
    assert ops(b.graph) == {"ConstantOfShape": 1, "Add": 1}


def test_does_not_fold_random_or_input_dependent():
    b = Builder()
    x = b.input("x", (2,))
    y = b.op("Neg", x)
    g = b.output(y)
    r = g.make_node("RandomNormal", [], attrs={"shape": [2]})
    r.outputs[0].dtype, r.outputs[0].shape = FLOAT32, (2,)
    g.outputs.append(r.outputs[0])
    assert not fold_constants(g)
    assert ops(g) == {"Neg": 1, "RandomNormal": 1}


def test_unknown_rank_shape_is_not_folded():
    b = Builder()
    x = b.input("x", (2,))
    s = b.op("Shape", x)
    x.shape = None
    b.output(s)
    assert not fold_constants(b.graph)
    assert isinstance(s, Value) and not s.is_const

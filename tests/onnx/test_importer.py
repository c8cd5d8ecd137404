import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from kiln.errors import ModelLoadError
from kiln.ir import print_graph, verify
from kiln.kernels.reference.interpret import run_graph
from kiln.onnx.importer import fix_input_dims, import_model
from kiln.onnx.load import load_model
from kiln.onnx.support import unsupported_nodes


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_initializers_and_constant_nodes_become_constants():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = _model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32([1, 2, 3]))),
                helper.make_node("Constant", [], ["k"], value_ints=[2, 3]),
                helper.make_node("MatMul", ["x", "w"], ["y"]),
                helper.make_node("Add", ["y", "c"], ["z"]),
                helper.make_node("Reshape", ["z", "k"], ["out"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["n", 2])],
               [helper.make_tensor_value_info("out", TP.FLOAT, [None, None])], [numpy_helper.from_array(w, "w")])
    g = import_model(m)
    verify(g)
    assert [n.op for n in g.nodes] == ["MatMul", "Add", "Reshape"]
    consts = {v.name: v for n in g.nodes for v in n.inputs if v is not None and v.is_const}
    assert set(consts) == {"w", "c", "k"}
    assert consts["k"].const.tolist() == [2, 3]
    assert g.inputs[0].shape == ("n", 2)
    assert g.nodes[0].outputs[0].shape == ("n", 3)  # shape inference keeps the symbol
    x = np.ones((2, 2), np.float32)
    out = run_graph(g, {"x": x})["out"].numpy()
    np.testing.assert_allclose(out, x @ w + [1, 2, 3])


def test_fix_input_dims_makes_profile_static_dims_static():
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, ["n", "c"])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [None, None])])
    g = import_model(fix_input_dims(m, {"x": ["n", 7]}))
    assert g.inputs[0].shape == ("n", 7)
    assert g.outputs[0].shape == ("n", 7)


def test_old_opset_attributes_move_to_inputs():
    m = _model([helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
                helper.make_node("ReduceMean", ["u"], ["r"], axes=[2], keepdims=0),
                helper.make_node("Softmax", ["r"], ["s"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, [3, 4])],
               [helper.make_tensor_value_info("s", TP.FLOAT, [None, None])], opset=11)
    g = import_model(m)
    unsq, red, sm = g.nodes
    assert "axes" not in unsq.attrs and unsq.inputs[1].const.tolist() == [0]
    assert "axes" not in red.attrs and red.inputs[1].const.tolist() == [2]
    assert sm.attrs == {"axis": 1, "coerce_2d": 1}
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    got = run_graph(g, {"x": x})["s"].numpy()
    r = x.mean(axis=1)[None, :]
    np.testing.assert_allclose(got, np.exp(r) / np.exp(r).sum(axis=1, keepdims=True), rtol=1e-5)


def test_subgraphs_import_and_capture_outer_values():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TP.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TP.FLOAT, [2])])
    m = _model([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
               [helper.make_tensor_value_info("cond", TP.BOOL, []), helper.make_tensor_value_info("x", TP.FLOAT, [2])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    g = import_model(m)
    node = g.nodes[0]
    then_branch = node.attrs["then_branch"]
    assert then_branch.outer["x"] is g.inputs[1]
    assert "<graph then: 1 nodes>" in print_graph(g)


def test_unsupported_ops_are_listed_with_node_and_opset():
    m = _model([helper.make_node("Relu", ["x"], ["a"]),
                helper.make_node("Frobnicate", ["a"], ["y"], domain="com.example", name="frob1")],
               [helper.make_tensor_value_info("x", TP.FLOAT, [2])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    bad = unsupported_nodes(import_model(m))
    assert [(u.node, u.op, u.opset) for u in bad] == [("frob1", "com.example::Frobnicate", 17)]
    assert "custom domain" in bad[0].reason


def test_external_data_is_read(tmp_path):
    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, [1, 64])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [1, 64])], [numpy_helper.from_array(w, "w")])
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").stat().st_size == w.nbytes
    g = import_model(load_model(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, w)


def test_missing_external_data_is_a_clear_error(tmp_path):
    w = np.zeros((64, 64), np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               [helper.make_tensor_value_info("x", TP.FLOAT, [1, 64])],
               [helper.make_tensor_value_info("y", TP.FLOAT, [1, 64])], [numpy_helper.from_array(w, "w")])
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "m.data").unlink()
    with pytest.raises(ModelLoadError, match="external weight data"):
        load_model(tmp_path / "m.onnx")

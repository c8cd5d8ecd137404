"""Engines with control flow and sequences: bodies compiled to sub-plans read the outer values
they capture, survive an engine-file round trip, and match onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.config import BuildConfig
from kiln.onnx.backend import KilnBackend


def _loop_model() -> onnx.ModelProto:
    """y = x; repeat n times: y = y * w + b, where w (computed outside) and b (an initializer)
    are captured by the body; each iteration's y is also a scan output."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["y_in", "w"], ["t"]),
         helper.make_node("Add", ["t", "b"], ["y_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["y_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [2, 3])])
    then_g = helper.make_graph([helper.make_node("Neg", ["final"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Abs", ["final"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", TensorProto.FLOAT, [2, 3])])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["w"]),
        helper.make_node("Loop", ["n", "", "x"], ["final", "scans"], body=body),
        helper.make_node("ReduceSum", ["final"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["z"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "loop_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("scans", TensorProto.FLOAT, [None, 2, 3])],
        [helper.make_tensor("b", TensorProto.FLOAT, [3], [0.5, -1.0, 0.25]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("n", [0, 1, 4])
def test_loop_and_if_match_onnxruntime_after_round_trip(tmp_path, n):
    model = _loop_model()
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    feeds = {"x": x, "n": np.array(n, dtype=np.int64)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    engine = kiln.build(model, BuildConfig(device="cpu"))
    engine.save(tmp_path / "loop.kiln")
    loaded = kiln.load(tmp_path / "loop.kiln")
    for e in (engine, loaded):
        got = e(**feeds)
        np.testing.assert_allclose(got["z"], want[0], rtol=1e-6, atol=1e-6)
        if n:
            np.testing.assert_allclose(got["scans"], want[1], rtol=1e-6, atol=1e-6)
        else:
            assert got["scans"].shape[0] == 0


def test_sequence_input_and_output_through_the_backend():
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    out = helper.make_tensor_sequence_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceInsert", ["seq", "t"], ["s2"]),
         helper.make_node("SequenceErase", ["s2", "zero"], ["out"]),
         helper.make_node("ConcatFromSequence", ["out"], ["cat"], axis=0)],
        "seq", [seq, helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
        [out, helper.make_tensor_value_info("cat", TensorProto.FLOAT, [None])],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a, b, t = (np.full(2, v, np.float32) for v in (1.0, 2.0, 3.0))
    got_seq, got_cat = KilnBackend.run_model(model, [[a, b], t])
    assert [s.tolist() for s in got_seq] == [[2.0, 2.0], [3.0, 3.0]]
    assert got_cat.tolist() == [2.0, 2.0, 3.0, 3.0]


def test_sequence_input_must_be_a_list():
    from kiln.errors import InputError
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SequenceLength", ["seq"], ["n"])], "len", [seq],
                              [helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    engine = kiln.build(model, BuildConfig(device="cpu"))
    import torch
    assert engine.run_tensors({"seq": [torch.zeros(1), torch.zeros(2)]})["n"].item() == 2
    with pytest.raises(InputError, match="expects a list of tensors"):
        engine.run_tensors({"seq": torch.zeros(2)})

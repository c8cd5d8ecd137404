"""precision/fuse_qdq_attention.py: an attention chain quantized the way ONNX Runtime's
quantize_static writes it (Q/DQ on Q, K, V, on the scores before and after the scaling, after
the mask and on the probabilities, then the output's QuantizeLinear) becomes one
kiln::QDQAttention, whose outputs are ONNX Runtime's bit for bit on the CPU; a chain with a value
read outside it stays as it was."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.config import BuildConfig

B, H, S, D = 2, 2, 8, 16


def _qdq(nodes, inits, x, name, scale, zp, dtype=np.int8):
    """x -> QuantizeLinear -> DequantizeLinear, its parameters as initializers; the DQ's output name."""
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(zp, dtype), f"{name}_z")]
    nodes += [helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def _dq(nodes, inits, x, name, scale, zp):
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(zp, np.int8), f"{name}_z")]
    nodes.append(helper.make_node("DequantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_dq"]))
    return f"{name}_dq"


def _model(probabilities_out: bool = False) -> onnx.ModelProto:
    nodes, inits = [], []
    q = _dq(nodes, inits, "q8", "q", 0.0107, 0)
    nodes.append(helper.make_node("Transpose", ["k8"], ["k8t"], perm=[0, 1, 3, 2]))
    kt = _dq(nodes, inits, "k8t", "k", 0.0111, 1)
    v = _dq(nodes, inits, "v8", "v", 0.0109, 4)
    nodes.append(helper.make_node("MatMul", [q, kt], ["scores"]))
    s = _qdq(nodes, inits, "scores", "s1", 0.031, -7)
    inits.append(numpy_helper.from_array(np.array(0.25, np.float32), "scale"))
    nodes.append(helper.make_node("Mul", [s, "scale"], ["scaled"]))
    s = _qdq(nodes, inits, "scaled", "s2", 0.0125, 3)
    nodes.append(helper.make_node("Add", [s, "mask"], ["masked"]))
    s = _qdq(nodes, inits, "masked", "s3", 0.0392, 100)
    nodes.append(helper.make_node("Softmax", [s], ["probs"], axis=-1))
    p = _qdq(nodes, inits, "probs", "p", 1 / 255, -128)
    nodes.append(helper.make_node("MatMul", [p, v], ["y"]))
    inits += [numpy_helper.from_array(np.array(0.0087, np.float32), "o_s"),
              numpy_helper.from_array(np.array(-3, np.int8), "o_z")]
    nodes.append(helper.make_node("QuantizeLinear", ["y", "o_s", "o_z"], ["y8"]))
    outputs = [helper.make_tensor_value_info("y8", TensorProto.INT8, [B, H, S, D])]
    if probabilities_out:
        outputs.append(helper.make_tensor_value_info(p, TensorProto.FLOAT, [B, H, S, S]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT8, [B, H, S, D]) for n in ("q8", "k8", "v8")]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [B, 1, 1, S]))
    graph = helper.make_graph(nodes, "qdq_attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8    # ONNX Runtime 1.30 reads IR versions up to 13; onnx 1.23 writes 14
    return model


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {n: rng.integers(-128, 128, (B, H, S, D), dtype=np.int8) for n in ("q8", "k8", "v8")}
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., S - 3:] = -10.0
    return {**feeds, "mask": mask}


def test_the_chain_is_one_layer_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = _model()
    engine = kiln.build(model, BuildConfig(device="cpu"))
    ops = [s.op for s in engine.plan.steps]
    assert ops.count("kiln::QDQAttention") == 1
    assert not {"MatMul", "Softmax", "QuantizeLinear", "DequantizeLinear", "kiln::Pointwise"} & set(ops)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for seed in range(3):
        feeds = _feeds(seed)
        want = session.run(None, feeds)[0]
        got = np.asarray(engine(**feeds)["y8"])
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(want)) > 20


def test_the_layer_survives_an_engine_file(tmp_path):
    """Its programs are attributes (data): saved and loaded, the engine computes the same codes."""
    engine = kiln.build(_model(), BuildConfig(device="cpu"))
    engine.save(tmp_path / "attention.kiln")
    loaded = kiln.load(tmp_path / "attention.kiln")
    assert [s.op for s in loaded.plan.steps].count("kiln::QDQAttention") == 1
    feeds = _feeds(5)
    np.testing.assert_array_equal(np.asarray(loaded(**feeds)["y8"]), np.asarray(engine(**feeds)["y8"]))


def test_a_value_read_outside_the_chain_keeps_it_apart():
    engine = kiln.build(_model(probabilities_out=True), BuildConfig(device="cpu"))
    ops = [s.op for s in engine.plan.steps]
    assert "kiln::QDQAttention" not in ops and "Softmax" in ops

"""Tiny ONNX models for the CLI and error tests, built with onnx.helper (no export, no torch).

conv_relu     x[N,3,8,8] -> Conv(4x3x3x3, pad 1) + bias -> Relu -> y[N,4,8,8]
matmul_add    a[batch,16] -> MatMul(16x8) -> Add(8) -> out[batch,8]
unsupported   a custom-domain op (com.example::Frobnicate) after a Relu
image_decoder a standard op kiln lacks (ImageDecoder), after a Relu
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto, extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="kiln-tests")
    model.ir_version = 8  # readable by every onnxruntime the tests allow
    return model


def _init(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def conv_relu() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "conv_relu", [x], [y], [_init("w", (4, 3, 3, 3), 0), _init("b", (4,), 1)])
    return _model(graph)


def matmul_add() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 16])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["out"], name="add")]
    graph = helper.make_graph(nodes, "matmul_add", [a], [out], [_init("w", (16, 8), 2), _init("b", (8,), 3)])
    return _model(graph)


def unsupported() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Frobnicate", ["r"], ["y"], name="frob", domain="com.example")]
    return _model(helper.make_graph(nodes, "custom_op", [x], [y]), (("com.example", 1),))


def image_decoder() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [64])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [None, None, 3])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ImageDecoder", ["r"], ["y"], name="decode")]
    model = _model(helper.make_graph(nodes, "image_decoder", [x], [y]))
    model.opset_import[0].version = 20  # ImageDecoder is new in opset 20
    model.ir_version = 9
    return model


def save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model under onnxruntime (CPU), outputs by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))

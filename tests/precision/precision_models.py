"""Tiny ONNX models for the precision tests, built with onnx.helper (no export, no torch).

mlp            x[4,16] -> MatMul "mm1" -> Relu "relu" -> MatMul "mm2" -> Add "add" -> y[4,8]
big_sum        x[2,8192] -> Mul "scale" -> ReduceSum(axis 1) "sum" -> y[2,1]; small=True sums 64
fp16_mixed     x fp16[4,16] -> MatMul "mm" (fp16) -> Cast "up" (fp32) -> Softmax "sm" (fp32)
               -> Cast "down" -> y fp16[4,8]
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def checked_model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    """`graph` as a checked ONNX model (IR 8, the default domain at `opset`)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(name: str, shape: tuple[int, ...], seed: int, dtype: type = np.float32) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype), name)


def mlp() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="mm2"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    return checked_model(helper.make_graph(nodes, "mlp", [x], [y], [_w("w1", (16, 32), 0), _w("w2", (32, 8), 1),
                                                                _w("b", (8,), 2)]))


def big_sum(small: bool = False) -> onnx.ModelProto:
    n = 64 if small else 8192
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    scale = numpy_helper.from_array(np.full((1,), 3.0, np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"], name="scale"),
             helper.make_node("ReduceSum", ["xs", "axes"], ["y"], name="sum", keepdims=1)]
    return checked_model(helper.make_graph(nodes, "big_sum", [x], [y], [axes, scale]))


def fp16_mixed() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 8])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Cast", ["m"], ["m32"], name="up", to=TensorProto.FLOAT),
             helper.make_node("Softmax", ["m32"], ["p"], name="sm", axis=-1),
             helper.make_node("Cast", ["p"], ["y"], name="down", to=TensorProto.FLOAT16)]
    return checked_model(helper.make_graph(nodes, "fp16_mixed", [x], [y], [_w("w", (16, 8), 3, np.float16)]))


def normal_feeds(name: str, shape: tuple[int, ...], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`n` feeds of input `name`, standard normal float32 of `shape` (seeded)."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def step_of(engine, source_name: str):  # noqa: ANN001, ANN201
    """The engine step that computes ONNX node `source_name` (itself, or a fused layer holding it)."""
    return next(s for s in engine.plan.steps if s.name == source_name or source_name in s.fused)


def out_dtypes(engine, step) -> list[str]:  # noqa: ANN001
    return [engine.plan.slots[o].dtype for o in step.outputs]


def in_dtypes(engine, step) -> list[str]:  # noqa: ANN001
    return [engine.plan.slots[i].dtype for i in step.inputs if i is not None]

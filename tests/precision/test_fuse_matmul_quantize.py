"""fuse_matmul_quantize: a float matmul kept wider in an int8/fp8 engine writes the next
quantized layer's input itself.

An FFN (x @ W1 + b1 -> Gelu -> @ W2 + b2) built int8/fp8 with the first matmul kept in a float
type by a layer precision rule (what an --accuracy-budget plan does): the structure after the
build (one kiln::MatMulQuantize step under the matmul's name, no QuantizeLinear step, the
header's count), engines with and without the fusion computing the same values bit for bit
(the fused op is defined as the two it replaces), and where it must not fuse (the matmul's
output also read by a float layer)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.cli.build_summary import int8_line
from kiln.compiler import builder
from kiln.config import BuildConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_models import checked_model, normal_feeds  # noqa: E402

D, H = 16, 32
SHAPE = (4, 8, D)


def ffn(extra_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = lambda name, shape: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             helper.make_node("Gelu", ["a1"], ["h"], name="gelu"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="bias2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))]
    if extra_reader:  # the hidden activation is also a graph output: it must stay float
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [*SHAPE[:2], H]))
    inits = [w("w1", (D, H)), w("w2", (H, D)),
             numpy_helper.from_array((0.1 * rng.standard_normal(H)).astype(np.float32), "b1"),
             numpy_helper.from_array((0.1 * rng.standard_normal(D)).astype(np.float32), "b2")]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              outputs, inits)
    return checked_model(graph, 20)


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    return normal_feeds("x", SHAPE, n, seed)


def build(model: onnx.ModelProto, precision: str, float_precision: str):  # noqa: ANN201
    return builder.build(model, BuildConfig(device="cpu", precision=precision, float_precision=float_precision,
                                            calib_method="minmax", layer_precision=(("mm1", float_precision),)),
                         calibration=feeds(3, 1))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("float_precision", ["fp32", "fp16"])
def test_kept_matmul_quantizes_its_output_without_changing_a_value(float_precision, precision, monkeypatch):
    model = ffn()
    fused = build(model, precision, float_precision)
    ops = [s.op for s in fused.plan.steps]
    (step,) = [s for s in fused.plan.steps if s.op == "kiln::MatMulQuantize"]
    assert step.attrs["activation"] == "Gelu"
    assert "QuantizeLinear" not in ops and "kiln::FusedMatMul" not in ops and ops.count("kiln::QMatMul") == 1
    assert fused.header["build"][precision]["matmul_quantize_fused"] == 1
    assert "1 float matmul(s) quantizing their output" in int8_line(fused.header["build"][precision])
    monkeypatch.setattr(builder, "fuse_matmul_quantize", lambda graph: False)
    plain = build(model, precision, float_precision)
    plain_ops = [s.op for s in plain.plan.steps]
    assert "kiln::MatMulQuantize" not in plain_ops and plain_ops.count("QuantizeLinear") == 1
    (kept,) = [s for s in plain.plan.steps if s.op == "kiln::FusedMatMul"]
    assert kept.name == step.name   # the matmul keeps its name
    assert plain.header["build"][precision]["matmul_quantize_fused"] == 0
    assert len(plain.plan.steps) == len(fused.plan.steps) + 1
    for feed in feeds(2, 7):
        np.testing.assert_array_equal(np.asarray(fused(**feed)["y"]), np.asarray(plain(**feed)["y"]))


def test_matmul_output_read_by_a_float_layer_is_not_fused():
    engine = build(ffn(extra_reader=True), "int8", "fp16")
    assert not any(s.op == "kiln::MatMulQuantize" for s in engine.plan.steps)
    assert engine.header["build"]["int8"]["matmul_quantize_fused"] == 0

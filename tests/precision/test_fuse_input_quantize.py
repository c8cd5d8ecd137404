"""fuse_input_quantize: a quantized conv that folds space to depth (a ResNet stem) quantizes its
float input itself.

A stem (Conv 7x7/2 over 3 channels, Relu, then a 1x1 conv) built int8/fp8: the structure after the
build (no QuantizeLinear step before the stem, its kiln::QConv step with x_dtype, the header's
count), engines with and without the fusion computing the same values bit for bit (the fused op
is defined as the two it replaces), and where it must not fuse (a stride-1 conv: no folded walk;
the quantized input also read by another layer)."""
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

SHAPE = (2, 3, 16, 16)


def stem(stride: int = 2, second_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = lambda name, shape: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", kernel_shape=[7, 7], pads=[3] * 4,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="proj", kernel_shape=[1, 1])]
    inits = [w("w1", (8, 3, 7, 7)), w("b1", (8,)), w("w2", (8, 8, 1, 1))]
    out = SHAPE[2] // stride
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SHAPE[0], 8, out, out])]
    if second_reader:   # a second conv over the same input: its quantized form is read twice
        nodes.append(helper.make_node("Conv", ["x", "w3"], ["z"], name="side", kernel_shape=[7, 7], pads=[3] * 4,
                                      strides=[stride, stride]))
        inits.append(w("w3", (8, 3, 7, 7)))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [SHAPE[0], 8, out, out]))
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              outputs, inits)
    return checked_model(graph, 17)


def build(model: onnx.ModelProto, precision: str, float_precision: str = "fp32"):  # noqa: ANN201
    return builder.build(model, BuildConfig(device="cpu", precision=precision, calib_method="minmax",
                                            float_precision=float_precision),
                         calibration=normal_feeds("x", SHAPE, 3, 1))


@pytest.mark.parametrize("float_precision", ["fp32", "fp16"])
@pytest.mark.parametrize("precision, code", [("int8", TensorProto.INT8), ("fp8", TensorProto.FLOAT8E4M3FN)])
def test_stem_quantizes_its_input_without_changing_a_value(precision, code, float_precision, monkeypatch):
    """fp16 float layers (TensorRT's --int8 --fp16): the conv's x_scale becomes float16 while the
    QuantizeLinear of the float32 input keeps its float32 scale, which the conv then takes as
    x_quant_scale, so that the codes stay the QuantizeLinear's."""
    fused = build(stem(), precision, float_precision)
    ops = [s.op for s in fused.plan.steps]
    first = next(s for s in fused.plan.steps if s.op == "kiln::QConv")     # the stem
    assert first.attrs["x_dtype"] == code and ops[0] == "kiln::QConv"
    assert "QuantizeLinear" not in ops[:ops.index("kiln::QConv")]
    assert fused.header["build"][precision]["input_quantize_fused"] == 1
    assert "1 conv(s) quantizing their float input" in int8_line(fused.header["build"][precision])
    assert (len(first.inputs) == 13) == (float_precision == "fp16")          # x_quant_scale, where it differs
    monkeypatch.setattr(builder, "fuse_input_quantize", lambda graph: False)
    plain = build(stem(), precision, float_precision)
    assert plain.header["build"][precision]["input_quantize_fused"] == 0
    assert len(plain.plan.steps) == len(fused.plan.steps) + 1
    assert [s.op for s in plain.plan.steps][0] == "QuantizeLinear"
    for feed in normal_feeds("x", SHAPE, 2, 7):
        np.testing.assert_array_equal(np.asarray(fused(**feed)["y"]), np.asarray(plain(**feed)["y"]))


def test_stride_1_and_shared_inputs_keep_their_quantize():
    engine = build(stem(stride=1), "int8")          # no folded walk: nothing would quantize in the copy
    assert engine.header["build"]["int8"]["input_quantize_fused"] == 0
    assert engine.plan.steps[0].op == "QuantizeLinear"
    shared = build(stem(second_reader=True), "int8")
    quantizes = [s for s in shared.plan.steps if s.op == "QuantizeLinear"]
    convs = [s for s in shared.plan.steps if s.op == "kiln::QConv"]
    assert len(convs) == 3 and not any(s.attrs.get("x_dtype") for s in convs)
    assert quantizes and shared.header["build"]["int8"]["input_quantize_fused"] == 0


@pytest.mark.parametrize("activations, code", [("QUInt8", TensorProto.UINT8), ("QInt8", TensorProto.INT8)])
def test_onnxruntime_qdq_stem_quantizes_its_input(tmp_path, activations, code, monkeypatch):
    """Explicit quantization (ONNX Runtime's QDQ stem, uint8 or int8 activations with a zero point):
    the builder runs the fusion for such graphs too, with the same values as without it."""
    quant = pytest.importorskip("onnxruntime.quantization")

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(normal_feeds("x", SHAPE, 3, 1))

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(stem(), src)
    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                          weight_type=quant.QuantType.QInt8, activation_type=getattr(quant.QuantType, activations))
    config = BuildConfig(device="cpu", precision="fp16")
    fused = builder.build(str(dst), config)
    assert fused.plan.steps[0].op == "kiln::QConv" and fused.plan.steps[0].attrs["x_dtype"] == code
    monkeypatch.setattr(builder, "fuse_input_quantize", lambda graph: False)
    plain = builder.build(str(dst), config)
    assert plain.plan.steps[0].op == "QuantizeLinear" and len(plain.plan.steps) == len(fused.plan.steps) + 1
    for feed in normal_feeds("x", SHAPE, 2, 7):
        np.testing.assert_array_equal(np.asarray(fused(**feed)["y"]), np.asarray(plain(**feed)["y"]))

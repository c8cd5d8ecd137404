"""quantize_residuals: a quantized CNN's residual stream read in 8 bits, so every block output folds.

Structure on a small ResNet (identity blocks and a downsampling block): every residual read
8-bit with its scale, the QuantizeLinear kernels between blocks folded away, the one read by
a float layer (the pooling head) left float; accuracy of whole int8/fp8 engines against fp32;
and the cases left alone (a residual from a float layer, a layer kept float by a rule)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.calibration import collect_ranges
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.ir import verify
from kiln.ir.graph import Graph
from kiln.kernels.reference.interpret import run_graph
from kiln.precision.fold_requantize import fold_requantize
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.int8 import quantize_layers
from kiln.precision.quantize_residuals import RES_SCALE, RESIDUAL, quantize_residuals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_int8 import BATCH, _model, _w, batches, cosine  # noqa: E402 (the int8 tests' helpers)

QUANTIZERS = {"int8": quantize_layers, "fp8": quantize_fp8}
QTYPES = {"int8": "int8", "fp8": "float8_e4m3fn"}
SHAPE = (BATCH, 3, 8, 8)


def resnet(residual_from_float: bool = False) -> onnx.ModelProto:
    """Stem conv (3->8), two identity bottlenecks (1x1, 3x3, 1x1 + the block input, Relu), a
    downsampling block (its 1x1/2 projection as the residual), GlobalAveragePool, Flatten, Gemm.
    With residual_from_float the first block's residual is the stem output through a Sigmoid."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 5])
    nodes = [helper.make_node("Conv", ["x", "sw", "sb"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["h0"], name="stem_relu")]
    inits = [_w("sw", (8, 3, 3, 3), 1, 27), _w("sb", (8,), 2, 4)]
    if residual_from_float:
        nodes.append(helper.make_node("Sigmoid", ["h0"], ["h0s"], name="sig"))
    seed = 10

    def block(i: int, src: str, cin: int, cout: int, stride: int, residual: str) -> str:
        nonlocal seed
        mid = cout // 2
        for name, shape in ((f"b{i}w1", (mid, cin, 1, 1)), (f"b{i}w2", (mid, mid, 3, 3)),
                            (f"b{i}w3", (cout, mid, 1, 1))):
            inits.append(_w(name, shape, seed, int(np.prod(shape[1:]))))
            inits.append(_w(name.replace("w", "b"), (shape[0],), seed + 1, 4))
            seed += 2
        nodes.extend([
            helper.make_node("Conv", [src, f"b{i}w1", f"b{i}b1"], [f"b{i}c1"], name=f"b{i}conv1"),
            helper.make_node("Relu", [f"b{i}c1"], [f"b{i}r1"], name=f"b{i}relu1"),
            helper.make_node("Conv", [f"b{i}r1", f"b{i}w2", f"b{i}b2"], [f"b{i}c2"], name=f"b{i}conv2",
                             pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("Relu", [f"b{i}c2"], [f"b{i}r2"], name=f"b{i}relu2"),
            helper.make_node("Conv", [f"b{i}r2", f"b{i}w3", f"b{i}b3"], [f"b{i}c3"], name=f"b{i}conv3"),
            helper.make_node("Add", [f"b{i}c3", residual], [f"b{i}sum"], name=f"b{i}add"),
            helper.make_node("Relu", [f"b{i}sum"], [f"b{i}out"], name=f"b{i}relu3")])
        return f"b{i}out"

    h = block(1, "h0", 8, 8, 1, "h0s" if residual_from_float else "h0")
    h = block(2, h, 8, 8, 1, h)
    inits.append(_w("dw", (16, 8, 1, 1), 90, 8))
    nodes.append(helper.make_node("Conv", [h, "dw"], ["down"], name="downsample", strides=[2, 2]))
    h = block(3, h, 8, 16, 2, "down")
    nodes.extend([helper.make_node("GlobalAveragePool", [h], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
                  helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)])
    inits += [_w("fw", (5, 16), 91, 16), _w("fb", (5,), 92, 4)]
    return _model(helper.make_graph(nodes, "resnet", [x], [y], inits))


def _quantized(precision: str, model: onnx.ModelProto | None = None) -> tuple[Graph, dict[str, float]]:
    graph = builder.optimized_graph(model or resnet(), BuildConfig(device="cpu"), lambda _m: None).graph
    ranges = collect_ranges(graph, batches(SHAPE), "minmax")
    QUANTIZERS[precision](graph, ranges)
    return graph, ranges


def _residual_convs(graph: Graph) -> list:
    return [n for n in graph.nodes if n.qualified_op == "kiln::QConv" and n.input(RESIDUAL) is not None]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_residuals_read_quantized_and_block_outputs_fold(precision: str) -> None:
    graph, ranges = _quantized(precision)
    convs = _residual_convs(graph)
    assert len(convs) == 3 and all(c.input(RESIDUAL).dtype.name == "float32" for c in convs)
    before = graph.op_counts()["QuantizeLinear"]   # x, stem out, block 1 and 2 outputs, and every conv2/conv3 input
    reference = [run_graph(graph, feed)["y"] for feed in batches(SHAPE)]

    assert quantize_residuals(graph, ranges, precision) == 3
    verify(graph)
    for c in convs:
        r = c.input(RESIDUAL)
        assert r.dtype.name == QTYPES[precision] and c.input(RES_SCALE) is not None
        assert r.producer().op == "QuantizeLinear" and c.input(RES_SCALE) is r.producer().input(1)
    # the stem's and block 1's outputs reuse the QuantizeLinear their next conv1 reads; the
    # projection's residual gets a new one
    assert graph.op_counts()["QuantizeLinear"] == before + 1
    assert quantize_residuals(graph, ranges, precision) == 0, "a second run finds nothing left"

    fold_requantize(graph)
    verify(graph)
    # left: the input's and the head's (the pooled features, for the Gemm); the stem, blocks 1
    # and 2 and the projection write 8 bits
    assert graph.op_counts()["QuantizeLinear"] == 2
    writers = {n.name: n for n in graph.nodes if n.qualified_op == "kiln::QConv"}
    assert sum(1 for n in writers.values() if n.attrs["out_dtype"]) == len(writers) - 1   # all but block 3's conv3
    got = [run_graph(graph, feed)["y"] for feed in batches(SHAPE)]
    for want, have in zip(reference, got):
        assert cosine(want.numpy(), have.numpy()) >= 0.995


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_engine_matches_fp32_and_reports_the_count(precision: str) -> None:
    model = resnet()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    q = builder.build(model, BuildConfig(device="cpu", precision=precision), calibration=batches(SHAPE))
    assert q.header["build"][precision]["residuals_quantized"] == 3
    steps = [s for s in q.plan.steps if s.op == "kiln::QConv" and len(s.inputs) > RES_SCALE]
    assert len(steps) == 3 and all(q.plan.slots[s.inputs[RESIDUAL]].dtype == QTYPES[precision] for s in steps)
    assert [s.op for s in q.plan.steps].count("QuantizeLinear") == 2   # the input's and the head's
    for feed in batches(SHAPE):
        assert cosine(np.asarray(fp32(**feed)["y"]), np.asarray(q(**feed)["y"])) >= 0.99


def test_residual_from_a_float_layer_stays_float() -> None:
    graph, ranges = _quantized("int8", resnet(residual_from_float=True))
    (first, *rest) = _residual_convs(graph)
    assert quantize_residuals(graph, ranges, "int8") == 2
    assert first.input(RESIDUAL).dtype.name == "float32" and first.input(RES_SCALE) is None
    assert all(c.input(RES_SCALE) is not None for c in rest)


def test_a_layer_kept_float_keeps_its_residual_float() -> None:
    model = resnet()
    kept = BuildConfig(device="cpu", precision="int8", layer_precision=(("b2conv3*", "fp32"),))
    q = builder.build(model, kept, calibration=batches(SHAPE))
    assert q.header["build"]["int8"]["residuals_quantized"] == 2
    # block 2's float conv3 reads block 1's output as a float residual, so that one is written in
    # float and quantized for block 2's conv1; block 2's float output is quantized for block 3:
    # two QuantizeLinear kernels beside the input's and the head's
    assert [s.op for s in q.plan.steps].count("QuantizeLinear") == 4


def test_build_summary_names_the_8bit_residuals() -> None:
    from kiln.cli.build_summary import int8_line
    q = builder.build(resnet(), BuildConfig(device="cpu", precision="int8"), calibration=batches(SHAPE))
    line = int8_line(q.header["build"]["int8"])
    assert "3 reading an 8-bit residual" in line and "attention" not in line


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_input_quantize_reads_the_float32_binding(precision: str) -> None:
    """--int8/--fp8 --fp16: the QuantizeLinear of the float32 image input reads it directly (no Cast
    to fp16 first: one pass over the input fewer), recorded as a layer kept in fp32."""
    config = BuildConfig(device="cpu", precision=precision, float_precision="fp16")
    q = builder.build(resnet(), config, calibration=batches(SHAPE))
    first = q.plan.steps[0]
    assert first.op == "QuantizeLinear" and first.inputs[0] == q.plan.inputs[0].slot
    assert "Cast" not in [s.op for s in q.plan.steps[:2]]
    kept = {d["layer"]: d for d in q.header["build"]["precision"]["layers"]}
    assert any("reads a float32 graph input" in d["reason"] for d in kept.values())

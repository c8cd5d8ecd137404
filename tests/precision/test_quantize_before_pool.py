"""quantize_before_pool: QuantizeLinear moved before a MaxPool fed by a quantized layer, then folded.

Structure after the pass (the pool between the QuantizeLinear and the next layer, reading 8-bit
values), exactness (the pooled 8-bit tensor equal to the unswapped chain's on the reference
interpreter, int8 and float8), the fold it enables, a whole int8 engine against fp32, and the
cases left alone."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from kiln.calibration import collect_ranges
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.ir import verify
from kiln.ir.graph import Graph
from kiln.kernels.reference.interpret import run_graph
from kiln.precision.fold_requantize import OUT_SCALE, fold_requantize
from kiln.precision.fp8 import quantize_fp8
from kiln.precision.int8 import quantize_layers
from kiln.precision.quantize_before_pool import quantize_before_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_int8 import BATCH, _model, _w, batches, cosine  # noqa: E402 (the int8 tests' helpers)

QUANTIZERS = {"int8": quantize_layers, "fp8": quantize_fp8}
QTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
SHAPE = (BATCH, 3, 12, 12)


def stem(indices: bool = False, pool_read_twice: bool = False) -> onnx.ModelProto:
    """x[4,3,12,12] -> Conv -> Relu -> MaxPool 3x3/2 pad 1 -> Conv -> GlobalAveragePool -> Flatten -> Gemm,
    ResNet's stem in small; optionally with the pool's Indices or its output read twice (left alone)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 5])]
    pool_outs = ["p", "idx"] if indices else ["p"]
    nodes = [helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], pool_outs, name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "c2w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    if indices:
        outs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [BATCH, 8, 6, 6]))
    if pool_read_twice:
        nodes.append(helper.make_node("ReduceMax", ["p"], ["pm"], name="pmax", keepdims=0))
        outs.append(helper.make_tensor_value_info("pm", TensorProto.FLOAT, []))
    inits = [_w("c1w", (8, 3, 3, 3), 10, 27), _w("c1b", (8,), 11, 4), _w("c2w", (16, 8, 3, 3), 12, 72),
             _w("fw", (5, 16), 13, 16), _w("fb", (5,), 14, 4)]
    return _model(helper.make_graph(nodes, "stem", [x], outs, inits))


def _quantized(precision: str, model: onnx.ModelProto | None = None) -> Graph:
    graph = builder.optimized_graph(model or stem(), BuildConfig(device="cpu"), lambda _m: None).graph
    QUANTIZERS[precision](graph, collect_ranges(graph, batches(SHAPE), "minmax"))
    return graph


def _pool(graph: Graph):
    (pool,) = [n for n in graph.nodes if n.op == "MaxPool"]
    return pool


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_swap_is_exact_and_lets_the_stem_requantize(precision: str) -> None:
    before, after = _quantized(precision), _quantized(precision)
    pool = _pool(after)
    layer, q = pool.input(0).producer(), pool.outputs[0].consumers()[0]
    p_q = q.outputs[0]
    assert layer.qualified_op == "kiln::QConv" and q.op == "QuantizeLinear"
    n_quantize = after.op_counts()["QuantizeLinear"]

    assert quantize_before_pool(after)
    verify(after)
    assert q.input(0).producer() is layer and pool.input(0) is q.outputs[0] and pool.outputs[0] is p_q
    assert pool.input(0).dtype.torch == QTYPES[precision] and pool.input(0).shape == layer.outputs[0].shape
    assert after.op_counts()["QuantizeLinear"] == n_quantize
    assert after.nodes.index(q) < after.nodes.index(pool)
    assert not quantize_before_pool(after), "a second run finds nothing left to swap"

    # max(q(x)) == q(max(x)): the pooled 8-bit tensor is the same, element for element
    for g in (before, after):
        g.outputs.append(next(v for v in g.values() if v.name == p_q.name))
    for feed in batches(SHAPE):
        want, got = run_graph(before, feed)[p_q.name], run_graph(after, feed)[p_q.name]
        assert got.dtype == QTYPES[precision]
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))

    # ... and the QuantizeLinear folds into the conv, which now writes the pool's 8-bit input
    assert fold_requantize(after)
    assert pool.input(0).producer() is layer and layer.input(OUT_SCALE) is not None
    assert layer.attrs["out_dtype"] == p_q.dtype.onnx


def test_int8_engine_pools_int8_and_matches_fp32() -> None:
    model = stem()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    int8 = builder.build(model, BuildConfig(device="cpu", precision="int8"), calibration=batches(SHAPE))
    (pool_step,) = [s for s in int8.plan.steps if s.op == "MaxPool"]
    assert int8.plan.slots[pool_step.inputs[0]].dtype == "int8"
    for feed in batches(SHAPE):   # in-distribution, as test_int8's engines
        assert cosine(np.asarray(fp32(**feed)["y"]), np.asarray(int8(**feed)["y"])) >= 0.99


@pytest.mark.parametrize("kw", [{"indices": True}, {"pool_read_twice": True}])
def test_left_alone(kw) -> None:  # noqa: ANN001
    graph = _quantized("int8", stem(**kw))
    pool = _pool(graph)
    assert not quantize_before_pool(graph)
    assert pool.input(0).producer().qualified_op == "kiln::QConv" and pool.input(0).dtype.name == "float32"


def test_negative_scale_left_alone() -> None:
    graph = _quantized("int8")
    q = _pool(graph).outputs[0].consumers()[0]
    q.input(1).const = np.asarray(-np.abs(np.asarray(q.input(1).const)))   # q reverses order: no commuting
    assert not quantize_before_pool(graph)

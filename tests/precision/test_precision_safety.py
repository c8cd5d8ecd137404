"""The safety table: in fp16/bf16 engines, ops unsafe by nature keep fp32 math unless a layer
precision rule says otherwise; ops whose kernels keep fp32 statistics are documented, not kept."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.ir import dtypes
from kiln.ir.graph import Graph
from kiln.precision.safety import FP32_MATH, KERNEL_FP32_STATISTICS, LARGE_REDUCTION, fp32_reason, reduced_elements

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_models as pm  # noqa: E402


@pytest.mark.parametrize("precision, low", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_a_big_reduce_sum_keeps_fp32(precision, low):
    engine = kiln.build(pm.big_sum(), kiln.BuildConfig(device="cpu", precision=precision))
    total, scale = pm.step_of(engine, "sum"), pm.step_of(engine, "scale")
    assert pm.in_dtypes(engine, total)[0] == "float32" and pm.out_dtypes(engine, total) == ["float32"]
    assert pm.out_dtypes(engine, scale) == [low]  # the rest follows the engine precision
    [layer] = engine.header["build"]["precision"]["layers"]
    assert layer["layer"] == "sum" and layer["precision"] == "fp32" and "8192 elements" in layer["reason"]
    x = np.random.default_rng(0).standard_normal((2, 8192)).astype(np.float32)
    want = pm.onnxruntime_outputs(pm.big_sum(), {"x": x})["y"]
    np.testing.assert_allclose(engine(x=x)["y"], want, rtol=2e-2, atol=0.5)


def test_a_small_reduce_sum_follows_the_engine():
    engine = kiln.build(pm.big_sum(small=True), kiln.BuildConfig(device="cpu", precision="fp16"))
    assert pm.out_dtypes(engine, pm.step_of(engine, "sum")) == ["float16"]
    assert engine.header["build"]["precision"]["layers"] == []


def test_a_layer_rule_overrides_the_table():
    config = kiln.BuildConfig(device="cpu", precision="fp16", layer_precision=(("sum", "fp16"),))
    engine = kiln.build(pm.big_sum(), config)
    assert pm.out_dtypes(engine, pm.step_of(engine, "sum")) == ["float16"]
    assert engine.header["build"]["precision"]["layers"] == []


def test_fp32_engines_apply_no_table():
    engine = kiln.build(pm.big_sum(), kiln.BuildConfig(device="cpu"))
    assert engine.header["build"]["precision"]["layers"] == []
    assert not any(s.op == "Cast" for s in engine.plan.steps)


def _graph(shape):  # noqa: ANN001, ANN202
    g = Graph()
    x = g.value("x", dtypes.FLOAT32, shape)
    g.inputs.append(x)
    return g, x


@pytest.mark.parametrize("shape, axes, want", [
    ((2, 8192), [1], 8192), ((2, 8192), [-1], 8192), ((64, 128), None, 8192), ((4, "n"), [1], None),
    ((4, "n"), [0], 4), ((3, 5), [], 15)])
def test_reduced_elements(shape, axes, want):
    g, x = _graph(shape)
    inputs = [x] if axes is None else [x, g.constant(np.array(axes, np.int64), "axes")]
    node = g.make_node("ReduceSum", inputs)
    assert reduced_elements(node) == want


def test_empty_axes_with_noop_sums_nothing():
    g, x = _graph((2, 8192))
    node = g.make_node("ReduceMean", [x, g.constant(np.array([], np.int64))], attrs={"noop_with_empty_axes": 1})
    assert reduced_elements(node) == 1 and fp32_reason(node) is None


def test_unknown_counts_follow_the_engine():
    g, x = _graph(("batch", 9000))
    assert fp32_reason(g.make_node("ReduceSum", [x, g.constant(np.array([0], np.int64))])) is None
    assert "9000" in fp32_reason(g.make_node("ReduceSum", [x, g.constant(np.array([1], np.int64))]))
    assert LARGE_REDUCTION == 4096


def test_exp_of_a_bounded_input_is_safe():
    g, x = _graph((4, 4))
    assert fp32_reason(g.make_node("Exp", [x])) is not None
    assert fp32_reason(g.make_node("CumSum", [x, g.constant(np.array(0, np.int64))])) is not None
    bounded = g.make_node("Tanh", [x]).outputs[0]
    assert fp32_reason(g.make_node("Exp", [bounded])) is None
    assert fp32_reason(g.make_node("Relu", [x])) is None


def test_the_tables_document_and_do_not_overlap():
    assert set(FP32_MATH).isdisjoint(KERNEL_FP32_STATISTICS)
    assert {"Softmax", "LayerNormalization", "kiln::Attention"} <= set(KERNEL_FP32_STATISTICS)
    assert all(reason.strip() for reason in (*FP32_MATH.values(), *KERNEL_FP32_STATISTICS.values()))

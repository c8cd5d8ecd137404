"""Implicit INT8: calibrated builds of a small MLP and CNN on CPU, against the fp32 engine;
the calibration cache (written, reused, invalidated); errors when no ranges can be had."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.calibration import collect as collect_module
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.errors import BuildError, KilnError
from kiln.ir.graph import Graph
from kiln.precision.int8 import quantize_layers

BATCH = 4
SAMPLES = 16


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(name: str, shape: tuple[int, ...], seed: int, fan_in: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def mlp(seed: int = 0) -> onnx.ModelProto:
    """x[4,16] -> MatMul -> Add -> Relu -> MatMul -> y[4,8]"""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 8])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    inits = [_w("w1", (16, 32), seed, 16), _w("b1", (32,), seed + 1, 4), _w("w2", (32, 8), seed + 2, 32)]
    return _model(helper.make_graph(nodes, "mlp", [x], [y], inits))


def cnn() -> onnx.ModelProto:
    """x[4,3,8,8] -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> y[4,5]"""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, 5])
    nodes = [helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2w"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    inits = [_w("c1w", (8, 3, 3, 3), 10, 27), _w("c1b", (8,), 11, 4), _w("c2w", (16, 8, 3, 3), 12, 72),
             _w("fw", (5, 16), 13, 16), _w("fb", (5,), 14, 4)]
    return _model(helper.make_graph(nodes, "cnn", [x], [y], inits))


def samples(shape: tuple[int, ...], seed: int = 100) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((SAMPLES, *shape[1:])).astype(np.float32)


def batches(shape: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    data = samples(shape)
    return [{"x": data[i:i + BATCH]} for i in range(0, SAMPLES, BATCH)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def int8_config(**kw) -> BuildConfig:  # noqa: ANN003
    return BuildConfig(device="cpu", precision="int8", **kw)


@pytest.mark.parametrize("make, shape, qop", [(mlp, (BATCH, 16), "kiln::QMatMul"),
                                               (cnn, (BATCH, 3, 8, 8), "kiln::QConv")])
def test_int8_engine_matches_fp32(make, shape, qop) -> None:  # noqa: ANN001
    model = make()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    int8 = builder.build(model, int8_config(), calibration=batches(shape))
    ops = [s.op for s in int8.plan.steps]
    assert qop in ops and "QuantizeLinear" in ops, ops
    # In-distribution inputs: 16 samples are too few for the ranges to cover a held-out draw's
    # tails (a clipped hidden activation moves a whole row).
    for feed in batches(shape):
        want, got = np.asarray(fp32(**feed)["y"]), np.asarray(int8(**feed)["y"])
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        assert cosine(want, got) >= 0.99
    report = int8.header["build"]["int8"]
    assert report["quantized"] and report["calibration"]["batches"] == SAMPLES // BATCH
    assert int8.header["build_config"]["precision"] == "int8"


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("make, shape", [(mlp, (BATCH, 16)), (cnn, (BATCH, 3, 8, 8))])
def test_fp16_float_layers(make, shape, precision) -> None:  # noqa: ANN001
    # --int8 --fp16: quantized layers plus 16-bit float layers and activations between them.
    model = make()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    q16 = builder.build(model, BuildConfig(device="cpu", precision=precision, float_precision="fp16"),
                        calibration=batches(shape))
    slots = q16.plan.slots
    float_types = {slots[i].dtype for st in q16.plan.steps if st.op != "Cast" for i in st.outputs
                   if slots[i].dtype in ("float16", "float32")}
    assert float_types == {"float16"}, float_types   # only the Casts at the float32 bindings are 32-bit
    assert any(st.op in ("kiln::QMatMul", "kiln::QConv") for st in q16.plan.steps)
    for feed in batches(shape):
        want, got = np.asarray(fp32(**feed)["y"]), np.asarray(q16(**feed)["y"])
        assert got.dtype == np.float32 and cosine(want, got) >= 0.99   # the binding keeps its declared type
    assert q16.header["build_config"]["float_precision"] == "fp16"
    with pytest.raises(KilnError, match="float precision .* needs an int8 or fp8 engine"):
        BuildConfig(precision="fp32", float_precision="fp16")


def test_cnn_quantizes_conv_and_gemm() -> None:
    engine = builder.build(cnn(), int8_config(), calibration=batches((BATCH, 3, 8, 8)))
    ops = [s.op for s in engine.plan.steps]
    assert ops.count("kiln::QConv") == 2 and ops.count("kiln::QMatMul") == 1, ops


def test_cache_written_reused_and_invalidated(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    calls = []
    real = collect_module.collect_ranges

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr("kiln.calibration.collect_ranges", counting)
    cache = tmp_path / "calib.json"
    config = int8_config(calib_cache=str(cache))
    first = builder.build(mlp(), config, calibration=batches((BATCH, 16)))
    assert len(calls) == 1 and cache.is_file()
    doc = json.loads(cache.read_text())
    assert doc["method"] == "minmax" and doc["ranges"]
    assert first.header["build"]["int8"]["calibration"]["source"] == "calibrated"

    again = builder.build(mlp(), config)  # no data needed: the cache serves
    assert len(calls) == 1
    assert again.header["build"]["int8"]["calibration"]["source"] == "cache"
    x = samples((BATCH, 16), 3)[:BATCH]
    np.testing.assert_array_equal(np.asarray(first(x=x)["y"]), np.asarray(again(x=x)["y"]))

    builder.build(mlp(seed=5), config, calibration=batches((BATCH, 16)))  # another model: recalibrated
    assert len(calls) == 2
    builder.build(mlp(seed=5), int8_config(calib_cache=str(cache), calib_method="entropy"),
                  calibration=batches((BATCH, 16)))  # another method: recalibrated
    assert len(calls) == 3
    assert json.loads(cache.read_text())["method"] == "entropy"


def test_missing_calibration_data_is_an_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(BuildError, match="--calib-data"):
        builder.build(mlp(), int8_config())
    with pytest.raises(BuildError, match="calibration cache"):
        builder.build(mlp(), int8_config(calib_cache=str(tmp_path / "absent.json")))


def test_calibration_data_is_checked_against_the_inputs() -> None:
    with pytest.raises(KilnError, match="'x'"):
        builder.build(mlp(), int8_config(), calibration=[{"x": np.zeros((BATCH, 15), np.float32)}])


def test_npz_calibration_data(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "calib.npz"
    np.savez(path, x=samples((BATCH, 16)))
    engine = builder.build(mlp(), int8_config(calib_data=str(path)))
    # the model fixes batch 4, so the 16 samples are cut into 4 batches of 4 (not the default 8)
    assert engine.header["build"]["int8"]["calibration"]["batches"] == 4


def test_config_checks_and_json() -> None:
    with pytest.raises(KilnError, match="only read by int8 and fp8 builds .* and fp16 builds"):
        BuildConfig(precision="bf16", calib_data="x.npz")
    with pytest.raises(KilnError, match="calib_cache is only read by int8"):
        BuildConfig(precision="fp16", calib_cache="c.json")
    assert BuildConfig(precision="fp16", calib_data="x.npz").calib_data == "x.npz"   # the fp16 overflow check
    with pytest.raises(KilnError, match="calibration method"):
        BuildConfig(precision="int8", calib_method="kl")
    config = BuildConfig(precision="int8", calib_method="percentile", calib_percentile=99.9, calib_data="d.npz")
    data = json.loads(json.dumps(config.to_json()))
    assert "calib_data" not in data
    again = BuildConfig.from_json(data)
    assert (again.calib_method, again.calib_percentile, again.calib_data) == ("percentile", 99.9, None)
    assert "calib_method" not in BuildConfig().to_json()


def test_layers_without_range_stay_float() -> None:
    front = builder.optimized_graph(mlp(), BuildConfig(device="cpu"), lambda _m: None)
    graph: Graph = front.graph
    report = quantize_layers(graph, {})
    assert not report.quantized and len(report.kept_float) == 2
    assert all("no calibrated range" in k.reason for k in report.kept_float)
    assert not any(n.op == "QuantizeLinear" for n in graph.nodes)

"""SmoothQuant (precision/smooth_quant.py): the rewrite's structure, that it leaves the fp32
function unchanged, that it makes int8 more accurate on an outlier channel, and its config/CLI checks."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from kiln.calibration import collect_statistics, load_channel_max, save_cache
from kiln.cli.main import main
from kiln.compiler import builder, quantize_step
from kiln.config import BuildConfig
from kiln.errors import KilnError
from kiln.kernels.reference.interpret import run_graph
from kiln.passes.match import const_array
from kiln.precision.smooth_quant import ALPHAS, SmoothQuantWarning, smooth, smoothing_factors, smoothing_inputs

C, N, T, BATCH, SAMPLES = 16, 8, 4, 4, 16
OUTLIER = 3  # the channel whose LayerNorm scale is 30x the others


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def ln_model(add: bool = False) -> onnx.ModelProto:
    """x[B,T,C] (+ r when `add`: the fused kiln::AddLayerNorm) -> LayerNormalization "ln" (an
    outlier channel in its scale) -> MatMul "q" and MatMul "k" (two readers) -> Add -> y; with
    `add` the sum also feeds y (AddLayerNorm's second output stays unscaled)."""
    rng = np.random.default_rng(0)
    scale = 1.0 + 0.1 * rng.standard_normal(C)
    scale[OUTLIER] = 30.0
    inits = [_init("scale", scale), _init("bias", 0.1 * rng.standard_normal(C)),
             _init("wq", rng.standard_normal((C, N)) / 4), _init("wk", rng.standard_normal((C, N)) / 4),
             _init("bq", 0.1 * rng.standard_normal(N))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, T, C])]
    nodes = []
    src = "x"
    if add:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [BATCH, T, C]))
        nodes.append(helper.make_node("Add", ["x", "r"], ["s"], name="res"))
        src = "s"
    nodes += [helper.make_node("LayerNormalization", [src, "scale", "bias"], ["h"], name="ln", axis=-1),
              helper.make_node("MatMul", ["h", "wq"], ["q0"], name="q"),
              helper.make_node("Add", ["q0", "bq"], ["q1"], name="qb"),
              helper.make_node("MatMul", ["h", "wk"], ["k0"], name="k"),
              helper.make_node("Add", ["q1", "k0"], ["y0"], name="sum")]
    if add:
        inits.append(_init("wo", rng.standard_normal((C, N)) / 4))
        nodes += [helper.make_node("MatMul", ["s", "wo"], ["o"], name="o"),
                  helper.make_node("Add", ["y0", "o"], ["y"], name="out")]
    else:
        nodes[-1].output[0] = "y"
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, T, N])
    model = helper.make_model(helper.make_graph(nodes, "ln_mm", inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(add: bool, seed: int = 100) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(SAMPLES // BATCH):
        feed = {"x": rng.standard_normal((BATCH, T, C)).astype(np.float32)}
        if add:
            feed["r"] = rng.standard_normal((BATCH, T, C)).astype(np.float32)
        out.append(feed)
    return out


def graph_of(model: onnx.ModelProto):  # noqa: ANN201
    return builder.optimized_graph(model, BuildConfig(device="cpu"), lambda _m: None).graph


def norm_of(graph):  # noqa: ANN001, ANN201
    return next(n for n in graph.nodes if n.qualified_op in ("LayerNormalization", "kiln::AddLayerNorm"))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("add", [False, True])
def test_structure_norm_divided_weights_multiplied_range_recomputed(add: bool) -> None:
    graph = graph_of(ln_model(add))
    norm = norm_of(graph)
    assert norm.qualified_op == ("kiln::AddLayerNorm" if add else "LayerNormalization")
    y = norm.outputs[0]
    assert y.name in smoothing_inputs(graph)
    readers = sorted(y.consumers(), key=lambda n: n.name)
    assert len(readers) == 2
    scale_i, bias_i = (2, 3) if add else (1, 2)
    scale0, bias0 = const_array(norm.input(scale_i)).copy(), const_array(norm.input(bias_i)).copy()
    w0 = [const_array(r.input(1)).copy() for r in readers]
    other = [n for n in graph.nodes if n.qualified_op not in ("LayerNormalization", "kiln::AddLayerNorm")
             and n not in readers and n.input(1) is not None and n.input(1).is_const]
    other_w = [const_array(n.input(1)).copy() for n in other]

    ranges, channel_max = collect_statistics(graph, feeds(add), "minmax", channels=smoothing_inputs(graph))
    x_max = channel_max[y.name]
    assert x_max.shape == (C,) and ranges[y.name] == pytest.approx(x_max.max(), rel=1e-6)
    assert x_max.argmax() == OUTLIER
    report = smooth(graph, ranges, channel_max, 0.85)

    assert [(a.activation, a.into) for a in report.smoothed] == [(y.name, "norm")] + ([("s", "quantizer")] if add else [])
    w_max = np.maximum(*[np.abs(w.astype(np.float64)).max(axis=1) for w in w0])
    s = smoothing_factors(x_max, w_max, 0.85)
    np.testing.assert_allclose(s, x_max ** 0.85 / w_max ** 0.15, rtol=1e-12)
    np.testing.assert_allclose(const_array(norm.input(scale_i)), scale0 / s, rtol=1e-6)
    np.testing.assert_allclose(const_array(norm.input(bias_i)), bias0 / s, rtol=1e-6)
    for r, w in zip(readers, w0):
        np.testing.assert_allclose(const_array(r.input(1)), w * s[:, None], rtol=1e-6)
    for n, w in zip(other, other_w):  # the residual stream's reader: smoothed through its quantizer
        mul = n.input(0).producer()
        if add and mul is not None and mul.op == "Mul":  # the matmul reading Sum
            assert mul.input(0).name == "s" and report.smoothed[1].norm == mul.name
            s_o = 1.0 / const_array(mul.input(1)).astype(np.float64)
            np.testing.assert_allclose(const_array(n.input(1)), w * s_o[:, None].astype(np.float32), rtol=1e-6)
            assert report.ranges[mul.outputs[0].name] == pytest.approx(float(np.max(channel_max["s"] * (1 / s_o))),
                                                                      rel=1e-6)
        else:
            np.testing.assert_array_equal(const_array(n.input(1)), w)
    assert report.ranges[y.name] == pytest.approx(float(np.max(x_max / s)), rel=1e-12)
    assert report.ranges[y.name] < ranges[y.name] / 2  # the outlier no longer sets the step
    new = {k for k in report.ranges if k not in ranges}
    assert len(new) == (1 if add else 0)
    assert {k: v for k, v in report.ranges.items() if k != y.name and k not in new} == \
        {k: v for k, v in ranges.items() if k != y.name}


@pytest.mark.parametrize("add", [False, True])
def test_fp32_function_unchanged(add: bool) -> None:
    plain, smoothed = graph_of(ln_model(add)), graph_of(ln_model(add))
    ranges, channel_max = collect_statistics(smoothed, feeds(add), "minmax", channels=smoothing_inputs(smoothed))
    assert smooth(smoothed, ranges, channel_max, 0.85).smoothed
    for feed in feeds(add, seed=7):
        want = run_graph(plain, feed)["y"].numpy()
        got = run_graph(smoothed, feed)["y"].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_reader_kept_float_moves_smoothing_to_the_quantizer() -> None:
    """One reader of the norm's output kept float by a layer precision rule: the norm cannot be
    divided (that reader needs x); the other reader is smoothed through a per-channel Mul."""
    graph = graph_of(ln_model())
    y = norm_of(graph).outputs[0]
    ranges, channel_max = collect_statistics(graph, feeds(False), "minmax", channels=smoothing_inputs(graph))
    kept, other = sorted(y.consumers(), key=lambda n: n.name)
    scale0 = const_array(norm_of(graph).input(1)).copy()
    report = smooth(graph, ranges, channel_max, 0.5, keep_float={id(kept)})
    assert [(a.activation, a.into, a.readers) for a in report.smoothed] == [(y.name, "quantizer", (other.name,))]
    np.testing.assert_array_equal(const_array(norm_of(graph).input(1)), scale0)
    assert kept.input(0) is y and other.input(0).producer().op == "Mul"


def test_nothing_to_smooth_warns() -> None:
    """Quantized readers but no per-channel maxima: nothing qualifies, and the build says the option
    changed nothing. With every reader kept wider by a layer rule (an accuracy-budget build) there is
    nothing to smooth and no warning."""
    graph = graph_of(ln_model())
    y = norm_of(graph).outputs[0]
    ranges, _ = collect_statistics(graph, feeds(False), "minmax", channels=smoothing_inputs(graph))
    with pytest.warns(SmoothQuantWarning, match=r"smoothed none of the 1 activation\(s\) that matmuls read"):
        assert smooth(graph, ranges, {}, 0.85).smoothed == ()
    _, channel_max = collect_statistics(graph, feeds(False), "minmax", channels=smoothing_inputs(graph))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmoothQuantWarning)
        assert smooth(graph, ranges, channel_max, 0.85, keep_float={id(n) for n in y.consumers()}).smoothed == ()


def _post_norm_model() -> onnx.ModelProto:
    """y = LN(x) read by two matmuls and by the residual add (a post-norm block)."""
    model = ln_model()
    model.graph.node[-1].output[0] = "y1"
    model.graph.node.extend([helper.make_node("Add", ["h", "x"], ["hr"], name="residual"),
                             helper.make_node("MatMul", ["hr", "wk"], ["o"], name="o"),
                             helper.make_node("Add", ["y1", "o"], ["y"], name="out")])
    return model


def test_post_norm_smoothed_through_the_quantizer() -> None:
    """The residual add needs x itself: the norm stays as it is, the matmuls read Mul(x, 1 / s),
    their weight rows times s; the fp32 function is unchanged."""
    graph = graph_of(_post_norm_model())
    norm = norm_of(graph)
    y = norm.outputs[0]
    scale0 = const_array(norm.input(1)).copy()
    ranges, channel_max = collect_statistics(graph, feeds(False), "minmax", channels=smoothing_inputs(graph))
    report = smooth(graph, ranges, channel_max, 0.85)
    entry = next(a for a in report.smoothed if a.activation == y.name)
    mul = next(n for n in graph.nodes if n.name == entry.norm)
    assert entry.into == "quantizer" and len(entry.readers) == 2
    assert {n.name for n in mul.outputs[0].consumers()} == set(entry.readers)
    np.testing.assert_array_equal(const_array(norm.input(1)), scale0)
    assert [n.op for n in y.consumers() if n is not mul] == ["Add"]  # the residual add reads x itself
    plain = graph_of(_post_norm_model())
    for feed in feeds(False, seed=7):
        np.testing.assert_allclose(run_graph(graph, feed)["y"].numpy(), run_graph(plain, feed)["y"].numpy(),
                                   rtol=1e-5, atol=1e-5)


def _half(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in float16: its float constants, inputs and outputs (a float16 ONNX export)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                                                    init.name))
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    return model


def test_float16_graph_smoothed_through_the_quantizer() -> None:
    """A float16 graph's post-norm activation is smoothed as a float32 one is (its Mul's constant in
    float16, folded into the quantizer with the exact factors): reported, no Mul left, and the int8
    engine at least 2x closer to the float16 graph's own output than without."""
    model = _half(_post_norm_model())
    half = [{k: v.astype(np.float16) for k, v in f.items()} for f in feeds(False)]
    ref = builder.build(model, BuildConfig(device="cpu"))
    plain = builder.build(model, BuildConfig(device="cpu", precision="int8"), calibration=half)
    smoothed = builder.build(model, BuildConfig(device="cpu", precision="int8", smooth_quant=0.85), calibration=half)
    report = smoothed.header["build"]["int8"]["smooth_quant"]
    assert report["smoothed"] and all(a["into"] == "quantizer" for a in report["smoothed"])
    assert "Mul" not in [s.op for s in smoothed.plan.steps]
    gains = []
    for feed in feeds(False, seed=100):
        feed = {k: v.astype(np.float16) for k, v in feed.items()}
        want = np.asarray(ref(**feed)["y"], np.float64)
        gains.append((1 - cosine(want, np.asarray(plain(**feed)["y"], np.float64))) /
                     (1 - cosine(want, np.asarray(smoothed(**feed)["y"], np.float64))))
    assert min(gains) > 2.0, gains


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_post_norm_engine_quantizes_per_channel_and_is_more_accurate(precision: str) -> None:
    """Built: no Mul is left, the matmuls' inputs are quantized with per-channel scales over the
    last axis (t * s_k; in the norm kernel for the norm's output), and the engine is closer to
    fp32 than without (int8 at least 2x; fp8, with 3 mantissa bits at every magnitude, not much
    worse)."""
    model = _post_norm_model()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    plain = builder.build(model, BuildConfig(device="cpu", precision=precision), calibration=feeds(False))
    smoothed = builder.build(model, BuildConfig(device="cpu", precision=precision, smooth_quant=0.85),
                             calibration=feeds(False))
    ops = [s.op for s in smoothed.plan.steps]
    assert "Mul" not in ops
    per_channel = [s for s in smoothed.plan.steps if s.op == "QuantizeLinear"
                   and np.prod(smoothed.plan.slots[s.inputs[1]].shape) == C]
    assert per_channel and all(s.attrs["axis"] == 2 for s in per_channel)   # the residual sum's matmul
    # The norm's output: quantized per channel in the norm kernel (precision/fuse_norm_quantize.py).
    (nq,) = [s for s in smoothed.plan.steps if s.op == "kiln::NormQuantize"]
    assert np.prod(smoothed.plan.slots[nq.inputs[4]].shape) == C and nq.attrs["float_output"] == 1
    gains = []
    for feed in feeds(False, seed=100):
        want = np.asarray(fp32(**feed)["y"])
        gains.append((1 - cosine(want, np.asarray(plain(**feed)["y"]))) /
                     (1 - cosine(want, np.asarray(smoothed(**feed)["y"]))))
    assert min(gains) > (2.0 if precision == "int8" else 0.5), gains


def _ffn_model() -> onnx.ModelProto:
    """x -> LN -> MatMul "up" + Relu -> MatMul "down" -> y: the down matmul's input is the up
    matmul's output, which an outlier column of W_up makes large in one channel."""
    rng = np.random.default_rng(1)
    w_up = rng.standard_normal((C, 2 * C)) / 4
    w_up[:, OUTLIER] *= 30
    inits = [_init("scale", 1.0 + 0.1 * rng.standard_normal(C)), _init("bias", 0.1 * rng.standard_normal(C)),
             _init("w_up", w_up), _init("w_down", rng.standard_normal((2 * C, N)) / 4)]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w_up"], ["u"], name="up"),
             helper.make_node("Relu", ["u"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w_down"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, T, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, T, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    return model


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_smoothed_input_of_a_quantized_layer_is_its_per_channel_requantization(precision: str,
                                                                              monkeypatch) -> None:  # noqa: ANN001
    """The down matmul's smoothed input comes from the up matmul: after fold_channel_scales its
    QuantizeLinear is per channel, and fold_requantize makes the up matmul requantize per output
    column (no QuantizeLinear left between them); the engine agrees with the unfolded one (the
    fold rounds once where the chain rounds through float32: one step near ties)."""
    model = _ffn_model()
    config = BuildConfig(device="cpu", precision=precision, smooth_quant=0.85)
    engine = builder.build(model, config, calibration=feeds(False))
    steps = engine.plan.steps
    up = next(s for s in steps if s.op == "kiln::QMatMul" and len(s.inputs) > 8 and s.inputs[8] is not None)
    assert np.prod(engine.plan.slots[up.inputs[8]].shape) == 2 * C            # out_scale per column
    assert engine.plan.slots[up.outputs[0]].dtype == {"int8": "int8", "fp8": "float8_e4m3fn"}[precision]
    assert [s.op for s in steps if s.op == "QuantizeLinear"] == []             # the norm quantizes x itself
    assert engine.header["build"][precision]["requantize_folded"] == 1
    monkeypatch.setattr(quantize_step, "fold_requantize", lambda graph: False)
    unfolded = builder.build(model, config, calibration=feeds(False))
    assert sum(s.op == "QuantizeLinear" for s in unfolded.plan.steps) == 1
    for feed in feeds(False, seed=101):
        assert cosine(np.asarray(engine(**feed)["y"]), np.asarray(unfolded(**feed)["y"])) > 0.9999


def _numpy_error(rows: np.ndarray, x_max: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """|| Q(x / s) @ Qw(s W) - x @ W ||^2 with int8 fake quantization, written independently."""
    s = smoothing_factors(x_max, np.abs(w).max(axis=1), alpha)
    xs, ws = rows / s, w * s[:, None]
    t = np.max(x_max / s) / 127.0
    xq = np.clip(np.round(xs / t), -127, 127) * t
    tw = np.abs(ws).max(axis=0, keepdims=True) / 127.0
    wq = np.clip(np.round(ws / tw), -127, 127) * tw
    return float(((xq @ wq - rows @ w) ** 2).sum())


def test_auto_alpha_is_the_grid_point_with_the_least_error() -> None:
    """choose_alpha on rows with an outlier channel: the grid's alpha of least quantization error
    (checked against an independent computation); without rows, the documented fallback."""
    from kiln.precision.int8 import QuantizableLayer
    from kiln.precision.smooth_quant import ALPHAS, AUTO_FALLBACK, choose_alpha

    rng = np.random.default_rng(4)
    rows = rng.standard_normal((256, C)).astype(np.float32)
    rows[:, OUTLIER] *= 40
    w = (rng.standard_normal((C, N)) / 4).astype(np.float32)
    x_max = np.abs(rows).max(axis=0).astype(np.float64)
    layer = QuantizableLayer(x=None, w=w, axis=1, bias=None, residual=None, attrs={})
    chosen = choose_alpha(rows, x_max, [layer], "int8")
    errors = {a: _numpy_error(rows.astype(np.float64), x_max, w.astype(np.float64), a) for a in ALPHAS}
    assert chosen in ALPHAS and errors[chosen] <= min(errors.values()) * (1 + 1e-3), (chosen, errors)
    assert errors[chosen] < errors[0.5]                 # the outlier channel makes smoothing pay
    transposed = QuantizableLayer(x=None, w=np.ascontiguousarray(w.T), axis=0, bias=None, residual=None, attrs={})
    assert choose_alpha(rows, x_max, [transposed], "int8") == chosen   # W stored [N, K] (Gemm transB)
    assert choose_alpha(None, x_max, [layer], "int8") == AUTO_FALLBACK
    assert choose_alpha(rows, x_max, [layer], "fp8") in ALPHAS


def test_auto_build_reports_an_alpha_per_activation() -> None:
    model = _post_norm_model()
    engine = builder.build(model, BuildConfig(device="cpu", precision="int8", smooth_quant="auto"),
                           calibration=feeds(False))
    report = engine.header["build"]["int8"]["smooth_quant"]
    assert report["alpha"] == "auto" and report["smoothed"]
    assert all(entry["alpha"] in ALPHAS for entry in report["smoothed"])
    assert engine.header["build_config"]["smooth_quant"] == "auto"


def test_calibration_keeps_sample_rows() -> None:
    graph = graph_of(ln_model())
    y = norm_of(graph).outputs[0]
    samples: dict = {}
    collect_statistics(graph, feeds(False), "minmax", channels=[y.name], samples=samples)
    assert list(samples) == [y.name] and samples[y.name].shape == (SAMPLES * T, C)
    assert samples[y.name].dtype == np.float32


def test_smoothing_factors_zero_channels_are_one() -> None:
    s = smoothing_factors(np.array([4.0, 0.0, 2.0]), np.array([1.0, 3.0, 0.0]), 0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 1.0])


@pytest.mark.parametrize("precision, gain", [("int8", 4.0), ("fp8", 1.0)])
def test_engine_more_accurate_with_smooth_quant(precision: str, gain: float) -> None:
    """int8's error (1 - cosine to fp32) falls at least 4x; fp8's, with 3 mantissa bits at every
    magnitude, does not grow."""
    model = ln_model()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    plain = builder.build(model, BuildConfig(device="cpu", precision=precision), calibration=feeds(False))
    smoothed = builder.build(model, BuildConfig(device="cpu", precision=precision, smooth_quant=0.85),
                             calibration=feeds(False))
    report = smoothed.header["build"][precision]["smooth_quant"]
    assert report["alpha"] == 0.85 and len(report["smoothed"]) == 1
    assert sorted(report["smoothed"][0]["readers"]) and "smooth_quant" not in plain.header["build"][precision]
    assert smoothed.header["build_config"]["smooth_quant"] == 0.85
    for feed in feeds(False, seed=100):
        want = np.asarray(fp32(**feed)["y"])
        c_plain, c_smooth = cosine(want, np.asarray(plain(**feed)["y"])), cosine(want, np.asarray(smoothed(**feed)["y"]))
        assert (1 - c_smooth) * gain <= 1 - c_plain, (c_plain, c_smooth)


def test_cache_holds_channel_maxima(tmp_path: Path) -> None:
    cache = tmp_path / "calib.json"
    save_cache(cache, {"a": 1.0}, graph_hash="h", method="minmax")  # a cache without maxima: a miss for smoothing
    assert load_channel_max(cache, "h", "minmax") == {}
    config = BuildConfig(device="cpu", precision="int8", smooth_quant=0.5, calib_cache=str(cache))
    first = builder.build(ln_model(), config, calibration=feeds(False))
    doc = json.loads(cache.read_text())
    assert doc["version"] == 1 and len(next(iter(doc["channel_max"].values()))) == C
    again = builder.build(ln_model(), config)  # no data: ranges and maxima from the cache
    assert again.header["build"]["int8"]["calibration"]["source"] == "cache"
    assert again.header["build"]["int8"]["smooth_quant"] == first.header["build"]["int8"]["smooth_quant"]
    feed = feeds(False, seed=3)[0]
    np.testing.assert_array_equal(np.asarray(first(**feed)["y"]), np.asarray(again(**feed)["y"]))


def test_config_checks_and_round_trip() -> None:
    for bad in (-0.1, 1.5, float("nan"), True, "0.5", "automatic"):
        with pytest.raises(KilnError, match=r"smooth_quant alpha .* is not a number in \[0, 1\]"):
            BuildConfig(precision="int8", smooth_quant=bad)
    with pytest.raises(KilnError, match="only changes int8 and fp8 builds.*precision is fp16"):
        BuildConfig(precision="fp16", smooth_quant=0.5)
    for alpha in (0.85, "auto"):
        config = BuildConfig(precision="fp8", smooth_quant=alpha)
        assert BuildConfig.from_json(config.to_json()) == config
    assert "smooth_quant" not in BuildConfig(precision="int8").to_json()
    assert BuildConfig.from_json(BuildConfig(precision="int8").to_json()).smooth_quant is None


def test_cli_option(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(ln_model(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in feeds(False)]))
    out = tmp_path / "m.kiln"
    runner = CliRunner()
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--int8", "--calib-data", str(data),
                                  "--smooth-quant", "0.85", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    smoothed = json.loads(result.stdout)["int8"]["smooth_quant"]
    assert smoothed["alpha"] == 0.85 and len(smoothed["smoothed"]) == 1
    text = runner.invoke(main, ["build", str(model), "-o", str(out), "--int8", "--calib-data", str(data),
                                "--smooth-quant", "0.5", "--device", "cpu"])
    flat = " ".join(text.output.split())  # the summary table wraps long cells
    assert text.exit_code == 0 and "SmoothQuant alpha 0.5: 1 activation(s) smoothed" in flat, text.output
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--fp16", "--smooth-quant", "0.5",
                                  "--device", "cpu"])
    assert result.exit_code == 1 and "drop --smooth-quant" in result.output
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--int8", "--calib-data", str(data),
                                  "--smooth-quant", "2", "--device", "cpu"])
    assert result.exit_code == 1 and "is not a number in [0, 1]" in result.output
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--int8", "--calib-data", str(data),
                                  "--smooth-quant", "maybe", "--device", "cpu"])
    assert result.exit_code == 2 and "neither a number nor 'auto'" in result.output
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--int8", "--calib-data", str(data),
                                  "--smooth-quant", "auto", "--device", "cpu", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["int8"]["smooth_quant"]["alpha"] == "auto"


if __name__ == "__main__":
    sys.exit(__import__("pytest").main([__file__, "-q"]))

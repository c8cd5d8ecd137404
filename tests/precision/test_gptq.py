"""GPTQ weight rounding (precision/gptq.py): the algorithm against nearest rounding on its own
objective, exactness where there is nothing to compensate, its build integration (int8/fp8,
with SmoothQuant), and the config/CLI checks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from kiln.calibration import collect_statistics
from kiln.calibration.gram_cache import gram_path
from kiln.cli.main import main
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.errors import BuildError, KilnError
from kiln.precision.fp8 import encode_fp8
from kiln.precision.gptq import GPTQRounding, gptq_codes, patch_gram, proxy_error
from kiln.compiler.quantize_step import smoothed_grams
from kiln.precision.int8 import encode_int8
from kiln.precision.smooth_quant import smooth, smoothing_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_smooth_quant import _post_norm_model, feeds, graph_of, ln_model  # noqa: E402

ENCODERS = {"int8": encode_int8, "fp8": encode_fp8}
QMAX = {"int8": 127.0, "fp8": 448.0}
K, N, HID, ROWS, BATCH = 48, 24, 32, 256, 8


def correlated_rows(rows: int, k: int, seed: int) -> torch.Tensor:
    """float64 [rows, k]: inputs with correlated channels of unequal size (what GPTQ exploits); one
    distribution (the mixing), `seed` draws the rows."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(99), dtype=torch.float64) / k ** 0.5 \
        + torch.eye(k, dtype=torch.float64)
    noise = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return noise @ mix * torch.linspace(0.2, 3.0, k, dtype=torch.float64)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_gptq_beats_nearest_on_its_objective_with_valid_codes(precision: str) -> None:
    x = correlated_rows(ROWS, K, 0)
    h = x.T @ x
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = w.abs().amax(1, keepdim=True) / QMAX[precision]
    encode = ENCODERS[precision]
    # GPTQ's own damping (0.01); blocks smaller than K: the between-block update runs too
    q = gptq_codes(w / s, h, encode, damp=0.01, block=16)
    nearest = encode(w / s)
    assert torch.equal(encode(q), q), "every GPTQ code is a code of the type"
    assert float(q.abs().max()) <= QMAX[precision]
    got, base = proxy_error(q * s - w, h), proxy_error(nearest * s - w, h)
    assert got < 0.6 * base, (got, base)
    # the objective is the output error on the calibration rows
    assert np.isclose(float(((x @ (q * s - w).T) ** 2).sum()), got, rtol=1e-9)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_gptq_keeps_weights_already_on_the_grid(precision: str) -> None:
    x = correlated_rows(ROWS, K, 2)
    codes = ENCODERS[precision](torch.randn(N, K, generator=torch.Generator().manual_seed(3),
                                            dtype=torch.float64) * QMAX[precision] / 4)
    assert torch.equal(gptq_codes(codes, x.T @ x, ENCODERS[precision]), codes)


def test_unexcited_channels_round_to_nearest_and_pass_no_error() -> None:
    x = correlated_rows(ROWS, K, 4)
    x[:, :5] = 0  # the calibration data never excites input channels 0..4
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 20
    q = gptq_codes(w, x.T @ x, encode_int8)
    assert torch.equal(q[:, :5], encode_int8(w[:, :5]))
    alone = x[:, 5:]  # the excited channels are rounded exactly as if the others were absent
    assert torch.equal(q[:, 5:], gptq_codes(w[:, 5:], alone.T @ alone, encode_int8))


def test_rounding_records_why_a_layer_kept_nearest() -> None:
    rounding = GPTQRounding({"x": torch.eye(4), "bad": torch.eye(3)})
    w = np.arange(8, dtype=np.float32).reshape(4, 2)  # [K 4, N 2], output channels on axis 1
    scale = np.full(2, 7 / 127, np.float32)
    assert rounding.codes("a", "missing", w, scale, 1, encode_int8) is None
    assert rounding.codes("b", "bad", w, scale, 1, encode_int8) is None
    codes = rounding.codes("c", "x", w, scale, 1, encode_int8)  # H = I: no correlation, GPTQ is nearest
    np.testing.assert_array_equal(codes, np.round(w / scale))
    doc = rounding.to_json()
    assert [r.get("reason", "") for r in doc["layers"]] == [
        "no calibration rows of its input 'missing'", "its input's Gram matrix is [3, 3], not [4, 4]", ""]
    assert doc["rounded"] == 1 and doc["mean_error_ratio"] == pytest.approx(1.0)


def mlp_model() -> onnx.ModelProto:
    """x[B, K] -> MatMul "fc1" (+ bias) -> Relu -> Gemm "fc2" (transB) -> y[B, N]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((K, HID)) / K ** 0.5), ("b1", 0.1 * rng.standard_normal(HID)),
        ("w2", rng.standard_normal((N, HID)) / HID ** 0.5), ("b2", 0.1 * rng.standard_normal(N)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    return model


def mlp_feeds(seed: int, batches: int = 32) -> list[dict[str, np.ndarray]]:
    x = correlated_rows(batches * BATCH, K, seed).numpy().astype(np.float32)
    return [{"x": x[i:i + BATCH]} for i in range(0, len(x), BATCH)]


def test_calibration_sums_gram_matrices() -> None:
    graph = builder.optimized_graph(mlp_model(), BuildConfig(device="cpu"), lambda _m: None).graph
    feeds = mlp_feeds(6, batches=3)
    grams: dict = {"x": None, "not_a_value": None}
    collect_statistics(graph, feeds, "minmax", grams=grams)
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    np.testing.assert_allclose(grams["x"].numpy(), x.T @ x, rtol=1e-5, atol=1e-3)
    assert grams["not_a_value"] is None


@pytest.mark.parametrize("scales", ["channel", "tensor"])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_build_rounds_matmul_weights_and_is_closer_to_fp32(precision: str, scales: str) -> None:
    model, calib = mlp_model(), mlp_feeds(7)
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    nearest = builder.build(model, BuildConfig(device="cpu", precision=precision, weight_scales=scales),
                            calibration=calib)
    gptq = builder.build(model, BuildConfig(device="cpu", precision=precision, weight_rounding="gptq",
                                            weight_scales=scales), calibration=calib)
    report = gptq.header["build"][precision]
    assert report["weight_rounding"] == "gptq" and gptq.header["build_config"]["weight_rounding"] == "gptq"
    assert report["gptq"]["rounded"] == 2 and all(0 < r["error_ratio"] < 1 for r in report["gptq"]["layers"])
    assert nearest.header["build"][precision]["weight_rounding"] == "nearest"
    assert "gptq" not in nearest.header["build"][precision]
    # out of sample (other rows of the same distribution): the squared output error falls
    err = {"nearest": 0.0, "gptq": 0.0}
    for feed in mlp_feeds(8, batches=8):
        want = np.asarray(fp32(**feed)["y"], np.float64)
        for name, engine in (("nearest", nearest), ("gptq", gptq)):
            err[name] += float(((np.asarray(engine(**feed)["y"], np.float64) - want) ** 2).sum())
    # measured: int8 1.83 -> 1.62, fp8 13.6 -> 10.5 (the activations' rounding, the same in both, is the rest)
    assert err["gptq"] < {"int8": 0.95, "fp8": 0.85}[precision] * err["nearest"], err


def test_build_with_smooth_quant_rounds_against_the_smoothed_inputs() -> None:
    calib = mlp_feeds(9)
    config = BuildConfig(device="cpu", precision="int8", smooth_quant=0.5, weight_rounding="gptq")
    engine = builder.build(mlp_model(), config, calibration=calib)
    report = engine.header["build"]["int8"]
    assert report["smooth_quant"]["smoothed"] and report["gptq"]["rounded"] == 2
    assert all(0 < r["error_ratio"] < 1 for r in report["gptq"]["layers"])


@pytest.mark.parametrize("model", ["norm", "post_norm"])
def test_smoothed_grams_are_the_grams_of_what_the_readers_read(model: str) -> None:
    """SmoothQuant through the norm (the activation keeps its name) and through a Mul before the
    readers (they read a new value): D^-1 H D^-1 equals the Gram matrix calibrated again on the
    smoothed graph, under the name the quantized readers read."""
    graph = graph_of(ln_model() if model == "norm" else _post_norm_model())
    names = smoothing_inputs(graph)
    grams: dict = dict.fromkeys(names)
    ranges, channel_max = collect_statistics(graph, feeds(False), "minmax", channels=names, grams=grams)
    report = smooth(graph, ranges, channel_max, 0.5)
    assert report.smoothed and {a.into for a in report.smoothed} == {"norm" if model == "norm" else "quantizer"}
    got = smoothed_grams({k: v for k, v in grams.items() if v is not None}, report)
    again: dict = dict.fromkeys(smoothing_inputs(graph))
    collect_statistics(graph, feeds(False), "minmax", grams=again)
    for a in report.smoothed:
        name = a.read_as or a.activation
        torch.testing.assert_close(got[name].float(), again[name], rtol=1e-4, atol=1e-3)


def test_gptq_reads_its_gram_matrices_from_the_cache_a_gptq_build_wrote(tmp_path: Path) -> None:
    cache = tmp_path / "calib.json"
    plain = BuildConfig(device="cpu", precision="fp8", calib_cache=str(cache))
    gptq = BuildConfig(device="cpu", precision="fp8", calib_cache=str(cache), weight_rounding="gptq")
    builder.build(mlp_model(), plain, calibration=mlp_feeds(10))       # ranges only: no Gram file
    assert cache.is_file() and not gram_path(cache).exists()
    with pytest.raises(BuildError, match=r"GPTQ weight rounding .* nor a calibration cache that holds them.*"
                                         r"drop --weight-rounding gptq"):
        builder.build(mlp_model(), gptq)
    first = builder.build(mlp_model(), gptq, calibration=mlp_feeds(10))  # calibrates, writes both files
    assert gram_path(cache).is_file()
    again = builder.build(mlp_model(), gptq)                             # no data: all from the cache
    assert again.header["build"]["fp8"]["calibration"]["source"] == "cache"
    assert again.header["build"]["fp8"]["gptq"] == first.header["build"]["fp8"]["gptq"]
    feed = mlp_feeds(12, batches=1)[0]
    np.testing.assert_array_equal(np.asarray(first(**feed)["y"]), np.asarray(again(**feed)["y"]))
    cache.unlink()                                                       # ranges from other data: the Grams stale
    builder.build(mlp_model(), plain, calibration=mlp_feeds(13))
    with pytest.raises(BuildError, match="nor a calibration cache that holds them"):
        builder.build(mlp_model(), gptq)
    gram_path(cache).write_bytes(b"not an npz")
    with pytest.raises(KilnError, match=r"Gram-matrix file .*calib.json.gram.npz' is corrupt.*delete it"):
        builder.build(mlp_model(), gptq)


def test_config_checks_and_round_trip() -> None:
    with pytest.raises(KilnError, match=r"weight rounding 'best' is not known: give \"nearest\".*\"gptq\""):
        BuildConfig(precision="int8", weight_rounding="best")
    with pytest.raises(KilnError, match=r"weight rounding gptq only changes int8 and fp8 builds.*precision is fp16"):
        BuildConfig(precision="fp16", weight_rounding="gptq")
    config = BuildConfig(precision="fp8", weight_rounding="gptq")
    assert BuildConfig.from_json(config.to_json()) == config
    assert "weight_rounding" not in BuildConfig(precision="int8").to_json()
    assert BuildConfig.from_json(BuildConfig(precision="int8").to_json()).weight_rounding == "nearest"


def test_cli_option(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(mlp_model(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.concatenate([f["x"] for f in mlp_feeds(11)]))
    out = tmp_path / "m.kiln"
    runner = CliRunner()
    args = ["build", str(model), "-o", str(out), "--fp8", "--calib-data", str(data), "--device", "cpu",
            "--weight-rounding", "gptq"]
    result = runner.invoke(main, args + ["--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fp8"]["gptq"]["rounded"] == 2
    text = runner.invoke(main, args)
    flat = " ".join(text.output.split())
    assert text.exit_code == 0 and "GPTQ rounded 2 weight(s)" in flat, text.output
    result = runner.invoke(main, ["build", str(model), "-o", str(out), "--fp16", "--weight-rounding", "gptq",
                                  "--device", "cpu"])
    assert result.exit_code == 1 and "drop --weight-rounding" in result.output
    result = runner.invoke(main, args[:-1] + ["round"])
    assert result.exit_code == 2 and "'round' is not one of" in result.output


# ---------------------------------------------------------------- convolutions


CONV_ATTRS = {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2], "group": 2}


def test_patch_gram_is_the_sum_of_the_patches_outer_products() -> None:
    x = torch.randn(2, 4, 7, 6, generator=torch.Generator().manual_seed(20))
    got = patch_gram(x, (3, 2), CONV_ATTRS)
    xp = torch.nn.functional.pad(x, (0, 1, 1, 2))       # pads [top, left, bottom, right] = [1, 0, 2, 1]
    want = torch.zeros(2, 2 * 3 * 2, 2 * 3 * 2, dtype=torch.float64)
    for g in range(2):
        for b in range(2):
            for oy in range(0, xp.shape[2] - 2, 2):      # kernel 3 tall, stride 2
                for ox in range(0, xp.shape[3] - 2):     # kernel 2 wide, dilation 2: spans 3
                    p = xp[b, 2 * g:2 * g + 2, oy:oy + 3, ox:ox + 3:2].reshape(-1).double()  # (c, i, j) order
                    want[g] += torch.outer(p, p)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert patch_gram(x[0], (3, 2), CONV_ATTRS) is None  # not a batch of 2-D images


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("group", [1, 2, 8])
def test_conv_codes_move_the_conv_outputs_less(precision: str, group: int) -> None:
    x = correlated_rows(4 * 8 * 8, 8, 21).reshape(4, 8, 8, 8).permute(0, 3, 1, 2).float()  # channels correlated
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)                                 # neighbours too
    attrs = {"pads": [1, 1, 1, 1], "group": group}
    w = torch.randn(16, 8 // group, 3, 3, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    scale = (w.abs().amax(dim=(1, 2, 3)) / QMAX[precision]).numpy()
    rounding = GPTQRounding({}, {"conv": patch_gram(x, (3, 3), attrs)}, damp=0.01)
    codes = torch.from_numpy(rounding.codes("conv", "conv", w.numpy(), scale, 0, ENCODERS[precision]))
    s = torch.from_numpy(scale).reshape(-1, 1, 1, 1)
    assert torch.equal(ENCODERS[precision](codes), codes) and codes.shape == w.shape

    def out_err(q: torch.Tensor) -> float:
        conv = torch.nn.functional.conv2d
        return float(((conv(x.double(), q * s, padding=1, groups=group) - conv(x.double(), w, padding=1,
                                                                                groups=group)) ** 2).sum())
    got, base = out_err(codes), out_err(ENCODERS[precision](w / s))
    assert got < 0.9 * base, (got, base)
    assert rounding.layers[0].error_ratio == pytest.approx(got / base, rel=1e-6)


def cnn_model() -> onnx.ModelProto:
    """x[B, 4, 8, 8] -> Conv "c1" (3x3, pads 1) -> Relu -> Conv "c2" (3x3, group 2, stride 2) -> y."""
    rng = np.random.default_rng(23)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((8, 4, 3, 3)) / 6), ("b1", 0.1 * rng.standard_normal(8)),
        ("w2", rng.standard_normal((6, 4, 3, 3)) / 6))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h0"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h0"], ["h"], name="relu"),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="c2", group=2, strides=[2, 2])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    return model


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_build_rounds_conv_weights(precision: str) -> None:
    rows = correlated_rows(16 * 64, 4, 24).float()
    calib = [{"x": rows[i:i + 128].reshape(2, 8, 8, 4).permute(0, 3, 1, 2).contiguous().numpy()}
             for i in range(0, len(rows), 128)]
    engine = builder.build(cnn_model(), BuildConfig(device="cpu", precision=precision, weight_rounding="gptq"),
                           calibration=calib)
    layers = engine.header["build"][precision]["gptq"]["layers"]
    assert len(layers) == 2 and all(0 < r["error_ratio"] <= 1 for r in layers), layers

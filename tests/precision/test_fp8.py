"""FP8 (E4M3) on CPU: quantize_fp8 on int8's MLP and CNN against the fp32 graph, an engine file
round trip with float8 weights, kiln::QMatMul/QConv on float8 inputs against a float64
dequantize-then-compute reference, exactness and its bound, and saturation."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

from kiln.calibration import collect_ranges
from kiln.calibration.calibrators import FP8_E4M3_QMAX
from kiln.compiler import builder
from kiln.compiler.lower import lower
from kiln.config import BuildConfig
from kiln.errors import KilnError
from kiln.engine.device import fingerprint
from kiln.ir import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantize import quantize_linear
from kiln.kernels.reference.quantized import FP8_EXACT_K, qconv, qmatmul
from kiln.precision import apply_precision
from kiln.precision.fp8 import fp8_weight, quantize_fp8
from kiln.runtime.engine import Engine, load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_int8 import BATCH, batches, cnn, cosine, mlp  # noqa: E402 (the int8 tests' models and data)

FP8 = torch.float8_e4m3fn
RNG = np.random.default_rng(0)
CASES = [(mlp, (BATCH, 16), {"kiln::QMatMul": 2}), (cnn, (BATCH, 3, 8, 8), {"kiln::QConv": 2, "kiln::QMatMul": 1})]


def _quantized(make, shape):  # noqa: ANN001, ANN202
    """(fp8 graph, its profiles, fp32 outputs per calibration batch, report): the chain the builder runs."""
    front = builder.optimized_graph(make(), BuildConfig(device="cpu"), lambda _m: None)
    graph = front.graph
    want = [run_graph(graph, feed)["y"].numpy() for feed in batches(shape)]
    ranges = collect_ranges(graph, batches(shape))
    report = quantize_fp8(graph, ranges)
    # fp8 computes the layers left in float in float32, as int8 (policy COMPUTE_TYPE["fp8"] = F32).
    apply_precision(graph, BuildConfig(device="cpu", precision="int8"))
    verify(graph)
    return graph, front.profiles, want, report


def _engine(graph, profiles) -> Engine:  # noqa: ANN001
    plan, consts = lower(graph, "cpu")
    config = {**BuildConfig(device="cpu").to_json(), "precision": "fp8", "profiles": [p.to_json() for p in profiles]}
    return Engine(plan, consts, {"build_config": config, "device": fingerprint("cpu")}, "cpu")


@pytest.mark.parametrize("make, shape, qops", CASES)
def test_fp8_graph_matches_fp32_and_survives_an_engine_file(make, shape, qops, tmp_path) -> None:  # noqa: ANN001
    graph, profiles, want, report = _quantized(make, shape)
    ops = [n.qualified_op for n in graph.nodes]
    assert {op: ops.count(op) for op in qops} == qops and not report.kept_float, ops
    for n in graph.nodes:
        if n.qualified_op in qops:
            assert n.input(0).dtype.name == "float8_e4m3fn" and n.input(3) is None
            w = n.input(1).const
            assert isinstance(w, torch.Tensor) and w.dtype == FP8
            assert w.float().abs().amax().item() == FP8_E4M3_QMAX  # the widest channel maps to 448
        if n.op == "QuantizeLinear":
            assert n.attrs == {"output_dtype": TensorProto.FLOAT8E4M3FN, "saturate": 1} and len(n.inputs) == 2
    got = [run_graph(graph, feed)["y"].numpy() for feed in batches(shape)]
    for w, g in zip(want, got):
        assert g.dtype == np.float32 and cosine(w, g) >= 0.99

    engine = _engine(graph, profiles)
    path = tmp_path / "fp8.kiln"
    engine.save(path)
    again = load(path)
    fp8_consts = [t for t in again._constants.values() if t.dtype == FP8]
    assert len(fp8_consts) == sum(qops.values())
    for feed, g in zip(batches(shape), got):
        np.testing.assert_array_equal(engine(**feed)["y"], g)
        np.testing.assert_array_equal(again(**feed)["y"], g)


def test_layers_without_range_stay_float() -> None:
    graph = builder.optimized_graph(mlp(), BuildConfig(device="cpu"), lambda _m: None).graph
    report = quantize_fp8(graph, {})
    assert not report.quantized and len(report.kept_float) == 2
    assert all("no calibrated range" in k.reason for k in report.kept_float)


def test_out_of_range_activations_saturate() -> None:
    graph, _, _, _ = _quantized(mlp, (BATCH, 16))
    q = next(n for n in graph.nodes if n.op == "QuantizeLinear" and n.input(0).name == "x")
    s = float(q.input(1).const)
    x = batches((BATCH, 16))[0]["x"] * np.float32(1e4)  # far past the calibrated range
    y = run_graph(graph, {"x": x})["y"].numpy()
    clipped = np.clip(x, -FP8_E4M3_QMAX * s, FP8_E4M3_QMAX * s)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, run_graph(graph, {"x": clipped})["y"].numpy())
    # QuantizeLinear itself: saturate=1 clamps to +-448; saturate=0 overflows to NaN (e4m3fn has no inf).
    big = torch.tensor([1e6, -1e6, 448.0 + 15.0, 1.0])
    sat = quantize_linear(big, torch.tensor(1.0), output_dtype=TensorProto.FLOAT8E4M3FN, saturate=1)
    assert sat.dtype == FP8 and sat.float().tolist() == [448.0, -448.0, 448.0, 1.0]
    raw = quantize_linear(big, torch.tensor(1.0), output_dtype=TensorProto.FLOAT8E4M3FN, saturate=0)
    assert torch.isnan(raw.float()[:2]).all()


def test_fp8_weight_per_channel() -> None:
    w = RNG.standard_normal((6, 5)).astype(np.float32)
    w[:, 2] = 0.0
    q, s = fp8_weight(w, 1)
    assert q.dtype == FP8 and s.dtype == np.float32 and s[2] == 1.0
    np.testing.assert_array_equal(q.float().abs().amax(0).numpy()[[0, 1, 3, 4]], FP8_E4M3_QMAX)
    back = q.double().numpy() * s
    assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-4 + 2.0**-10 * s)  # RNE on a 3-bit mantissa


def test_fp8_weight_per_tensor() -> None:
    # One scale for the whole weight: the widest channel reaches 448, the narrower ones keep
    # their ratio to it; an all-zero weight gets scale 1.
    w = RNG.standard_normal((6, 5)).astype(np.float32)
    w[:, 2] *= 0.01
    q, s = fp8_weight(w, 1, per_tensor=True)
    assert s.shape == (1,) and s[0] == np.float32(np.abs(w).max() / FP8_E4M3_QMAX)
    assert float(q.float().abs().max()) == FP8_E4M3_QMAX
    back = q.double().numpy() * s
    assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-4 + 2.0**-10 * s)
    assert fp8_weight(np.zeros((3, 4), np.float32), 0, per_tensor=True)[1].tolist() == [1.0]


# ---------------------------------------------------------------- the reference ops on float8


def _fp8(*shape: int, amax: float = 448.0) -> torch.Tensor:
    return torch.from_numpy(RNG.uniform(-amax, amax, shape).astype(np.float32)).to(FP8)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_qmatmul_fp8_matches_float64_dequantize(trans_b) -> None:  # noqa: ANN001
    a = _fp8(2, 3, 64)
    b = _fp8(5, 64) if trans_b else _fp8(64, 5)
    a_s = torch.tensor(0.01, dtype=torch.float32)
    b_s = torch.from_numpy(RNG.uniform(1e-4, 1e-3, 5).astype(np.float32))
    bias, res = torch.randn(5), torch.randn(2, 3, 5)
    dq_b = b.double() * (b_s.double()[:, None] if trans_b else b_s.double())
    want = torch.relu((a.double() * a_s.double()) @ (dq_b.T if trans_b else dq_b) + bias.double() + res.double())
    y = qmatmul(a, b, a_s, None, b_s, None, bias, res, trans_b=trans_b, activation="Relu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), want, rtol=2**-23, atol=1e-12)


def test_qconv_fp8_matches_float64_dequantize() -> None:
    x, w = _fp8(2, 4, 6, 6), _fp8(8, 2, 3, 3)
    x_s = torch.tensor(0.02, dtype=torch.float32)
    w_s = torch.from_numpy(RNG.uniform(1e-4, 1e-3, 8).astype(np.float32))
    bias = torch.randn(8)
    want = F.conv2d(x.double() * x_s.double(), w.double() * w_s.double()[:, None, None, None], bias.double(),
                    stride=2, padding=1, groups=2)
    y = qconv(x, w, x_s, torch.zeros((), dtype=FP8), w_s, None, bias, pads=[1, 1, 1, 1], strides=[2, 2], group=2)
    torch.testing.assert_close(y.double(), want, rtol=2**-23, atol=1e-12)


def test_fp8_sums_are_exact() -> None:
    # 448*448 + 2^-9*2^-9 - 448*448: float32 accumulation loses the middle term, float64 keeps it.
    a = torch.tensor([[448.0, 2.0**-9, -448.0]]).to(FP8)
    b = torch.tensor([[448.0], [2.0**-9], [448.0]]).to(FP8)
    one = torch.tensor(1.0)
    assert qmatmul(a, b, one, None, one).item() == 2.0**-18


def test_fp8_reduction_bound_and_bad_inputs() -> None:
    one = torch.tensor(1.0)
    k = FP8_EXACT_K + 1
    assert FP8_EXACT_K * 448**2 <= 2**35 < k * 448**2
    with pytest.raises(ValueError, match="171196"):
        qmatmul(torch.ones(1, k).to(FP8), torch.ones(k, 1).to(FP8), one, None, one)
    with pytest.raises(ValueError, match="no zero point"):
        qmatmul(_fp8(1, 4), _fp8(4, 2), one, torch.tensor(1.0).to(FP8), one)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        qmatmul(torch.ones(1, 4), _fp8(4, 2), one, None, one)


# ---------------------------------------------------------------- through the builder and the CLI


@pytest.mark.parametrize("make, shape, qops", CASES)
def test_fp8_build_matches_fp32(make, shape, qops, tmp_path) -> None:  # noqa: ANN001
    model = make()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    fp8 = builder.build(model, BuildConfig(device="cpu", precision="fp8"), calibration=batches(shape))
    ops = [s.op for s in fp8.plan.steps]
    assert {op: ops.count(op) for op in qops} == qops and "QuantizeLinear" in ops, ops
    assert fp8.header["build"]["fp8"]["quantized"] and "int8" not in fp8.header["build"]
    assert fp8.header["build_config"]["precision"] == "fp8"
    path = tmp_path / "fp8.kiln"
    fp8.save(path)
    again = load(path)
    for feed in batches(shape):
        want, got = np.asarray(fp32(**feed)["y"]), np.asarray(fp8(**feed)["y"])
        assert cosine(want, got) >= 0.99
        np.testing.assert_array_equal(np.asarray(again(**feed)["y"]), got)


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_per_tensor_weight_scales_build(precision) -> None:  # noqa: ANN001
    # BuildConfig.weight_scales "tensor": every quantized layer carries one weight scale, the
    # engine still matches fp32, and the config round-trips through the engine header.
    model = cnn()
    config = BuildConfig(device="cpu", precision=precision, weight_scales="tensor")
    engine = builder.build(model, config, calibration=batches((BATCH, 3, 8, 8)))
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    quantized = [s for s in engine.plan.steps if s.op in ("kiln::QMatMul", "kiln::QConv")]
    assert len(quantized) == 3
    for step in quantized:   # b_scale: input 4, a constant slot
        slot = engine.plan.slots[step.inputs[4]]
        assert slot.kind == "const" and engine._constants[slot.const_key].numel() == 1, step.name
    assert engine.header["build"][precision]["weight_scales"] == "tensor"
    assert BuildConfig.from_json(engine.header["build_config"]).weight_scales == "tensor"
    for feed in batches((BATCH, 3, 8, 8)):
        assert cosine(np.asarray(fp32(**feed)["y"]), np.asarray(engine(**feed)["y"])) >= 0.99
    with pytest.raises(KilnError, match="weight scales per tensor only change int8 and fp8 builds"):
        BuildConfig(precision="fp16", weight_scales="tensor")
    with pytest.raises(KilnError, match="weight scales 'row' are not known"):
        BuildConfig(precision="fp8", weight_scales="row")


def test_fp8_config_and_cli_flag(tmp_path) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from kiln.cli.build import build as build_cmd

    config = BuildConfig(precision="fp8", calib_method="minmax", calib_data="d.npz")
    assert BuildConfig.from_json(config.to_json()).calib_method == "minmax"
    onnx_path, npz = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx_path.write_bytes(mlp().SerializeToString())
    np.savez(npz, x=batches((BATCH, 16))[0]["x"].repeat(4, 0))
    result = CliRunner().invoke(build_cmd, [str(onnx_path), "-o", str(tmp_path / "m.kiln"), "--fp8",
                                            "--calib-data", str(npz), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "m.kiln").header["build"]["fp8"]["quantized"]
    per_tensor = CliRunner().invoke(build_cmd, [str(onnx_path), "-o", str(tmp_path / "t.kiln"), "--fp8",
                                                "--calib-data", str(npz), "--device", "cpu", "--weight-scales", "tensor"])
    assert per_tensor.exit_code == 0 and "weight scales per tensor" in per_tensor.output, per_tensor.output
    assert load(tmp_path / "t.kiln").header["build_config"]["weight_scales"] == "tensor"
    bad = CliRunner().invoke(build_cmd, [str(onnx_path), "-o", str(tmp_path / "n.kiln"), "--fp8", "--int8"])
    assert bad.exit_code != 0 and "conflicting precisions" in bad.output

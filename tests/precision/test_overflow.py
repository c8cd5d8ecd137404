"""fp16 overflow found at build time on the calibration data (precision/overflow.py).

Tiny models whose intermediate leaves fp16's range while their output is small in fp32:
without calibration data the fp16 engine gives inf/NaN; with it the layers concerned are
kept in fp32 (producer and readers), a warning names each, the engine header says why, and
the output matches fp32. Also: a program mid-graph, the margin, a constant fp16 rounds to
inf, a user rule that overrides the check, bf16 (no check), and `kiln build --precision fp16
--calib-data`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from kiln.cli.build import build as build_command
from kiln.compiler import builder
from kiln.config import BuildConfig
from kiln.errors import KilnError
from kiln.precision.overflow import LIMIT, Fp16OverflowWarning, OverflowReport
from kiln.runtime.engine import Engine, load

SHAPE = (4, 8)


def _model(name: str, nodes: list, inits: list) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def scaled(up: float = 1000.0) -> onnx.ModelProto:
    """x -> Mul "up1" (*up) -> Mul "up2" (*up) -> Div "down" (/up^2) -> y: one kiln::Pointwise
    after the passes, whose middle step is up^2 * x."""
    nodes = [helper.make_node("Mul", ["x", "k1"], ["a"], name="up1"),
             helper.make_node("Mul", ["a", "k2"], ["b"], name="up2"),
             helper.make_node("Div", ["b", "k3"], ["y"], name="down")]
    return _model("scaled", nodes, [_scalar("k1", up), _scalar("k2", up), _scalar("k3", up * up)])


def matmuls() -> onnx.ModelProto:
    """x -> MatMul "pre" (|W| ~ 1) -> MatMul "up" (|W| ~ 1e5) -> MatMul "down" (|W| ~ 1e-5) -> y:
    the tensor between up and down is ~1e5, beyond fp16's 65504."""
    rng = np.random.default_rng(0)

    def w(name: str, scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal((8, 8)) * scale / np.sqrt(8)).astype(np.float32), name)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["p"], name="pre"),
             helper.make_node("MatMul", ["p", "w1"], ["h"], name="up"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="down")]
    return _model("matmuls", nodes, [w("w0", 1.0), w("w1", 1e5), w("w2", 1e-5)])


def divide() -> onnx.ModelProto:
    """x -> Div "shrink" by the constant 1e6, which fp16 rounds to inf (x / inf = 0)."""
    return _model("divide", [helper.make_node("Div", ["x", "k"], ["y"], name="shrink")], [_scalar("k", 1e6)])


def feeds(n: int = 3, seed: int = 0, amax: float | None = None) -> list[dict[str, np.ndarray]]:
    """n batches of standard normal x (or uniform in [-amax, amax] with one element at amax)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal(SHAPE) if amax is None else rng.uniform(-amax, amax, SHAPE)
        if amax is not None:
            x.flat[0] = amax
        out.append({"x": x.astype(np.float32)})
    return out


def run(engine: Engine, feed: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(engine(**feed)["y"])


def fp16_build(model: onnx.ModelProto, calibration: list | None,
               **config: object) -> tuple[Engine, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Fp16OverflowWarning)
        engine = builder.build(model, BuildConfig(device="cpu", precision=config.pop("precision", "fp16"),
                                                  **config), calibration=calibration)
    return engine, [w for w in caught if issubclass(w.category, Fp16OverflowWarning)]


def step_dtypes(engine: Engine) -> dict[str, str]:
    return {s.name: engine.plan.slots[s.outputs[0]].dtype for s in engine.plan.steps}


@pytest.mark.parametrize("make, kept, rtol", [(scaled, None, 0.0), (matmuls, ["up", "down"], 2e-2)])
def test_overflowing_layers_kept_in_fp32_with_a_warning(make, kept, rtol) -> None:  # noqa: ANN001
    model = make()
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    plain, none = fp16_build(model, None)
    assert not none and "fp16_overflow" not in plain.header["build"]
    assert not np.isfinite(run(plain, feeds()[0])).all(), "without calibration data the fp16 engine overflows"

    engine, caught = fp16_build(model, feeds())
    report = engine.header["build"]["fp16_overflow"]
    names = [k["layer"] for k in report["kept_fp32"]]
    if kept is None:  # the fused Pointwise: named by its node, and its source nodes in the warning
        assert len(names) == 1 and report["kept_fp32"][0]["fused_from"] == ["up1", "up2", "down"]
        assert report["kept_fp32"][0]["role"] == "computes" and report["kept_fp32"][0]["tensor"] == "t1 (Mul)"
        assert "fused from up1, up2, down" in str(caught[0].message)
    else:
        assert names == kept and [k["role"] for k in report["kept_fp32"]] == ["writes", "reads"]
        assert step_dtypes(engine)["pre"] == "float16"  # the layer before the large tensor stays fp16
    assert report["batches"] == 3 and report["limit"] == LIMIT and not report["overridden"]
    assert [str(w.message).split("'")[1] for w in caught] == names
    for w, entry in zip(caught, report["kept_fp32"]):
        text = str(w.message)
        assert "kept in fp32" in text and f"{entry['amax']:.4g}" in text
        assert f"--layer-precision '{entry['layer']}=fp16'" in text
    assert all(step_dtypes(engine)[n] == "float32" for n in names)
    decisions = {d["layer"]: d for d in engine.header["build"]["precision"]["layers"]}
    assert all(decisions[n]["precision"] == "fp32" and decisions[n]["reason"].startswith("fp16 overflow on the "
                                                                                          "calibration data")
               for n in names)
    assert engine.header["build_config"]["layer_precision"] == [[n, "fp32"] for n in names]
    for feed in feeds(2, seed=7):  # held-out inputs of the same distribution
        want, got = run(fp32, feed), run(engine, feed)
        assert np.isfinite(got).all() and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_program_in_the_middle_of_a_graph() -> None:
    """Pointwise(x * 1e5 / 1e5) -> c; MatMul(x) -> e; FusedMatMul(c, residual e) -> y: only the
    program is kept; x, read again after it, is still there for the MatMul; the rest is fp16."""
    rng = np.random.default_rng(3)

    def w(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), name)
    model = _model("middle", [helper.make_node("Mul", ["x", "k1"], ["a"], name="up"),
                              helper.make_node("Div", ["a", "k2"], ["c"], name="down"),
                              helper.make_node("MatMul", ["c", "w1"], ["d"], name="mm1"),
                              helper.make_node("MatMul", ["x", "w2"], ["e"], name="mm2"),
                              helper.make_node("Add", ["d", "e"], ["y"], name="add")],
                   [_scalar("k1", 1e5), _scalar("k2", 1e5), w("w1"), w("w2")])
    engine, caught = fp16_build(model, feeds())
    (entry,) = engine.header["build"]["fp16_overflow"]["kept_fp32"]
    assert entry["fused_from"] == ["up", "down"] and entry["tensor"] == "t0 (Mul)" and len(caught) == 1
    dtypes = step_dtypes(engine)
    assert dtypes[entry["layer"]] == "float32" and dtypes["mm2"] == "float16"
    assert [d for n, d in dtypes.items() if n not in (entry["layer"], "mm2") and not n.endswith("_cast")] == ["float16"]
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    feed = feeds(1, seed=9)[0]
    np.testing.assert_allclose(run(engine, feed), run(fp32, feed), rtol=2e-2, atol=2e-2 * np.abs(run(fp32, feed)).max())


def test_constant_that_fp16_rounds_to_inf() -> None:
    model = divide()
    plain, _ = fp16_build(model, None)
    feed = feeds()[0]
    # Without calibration data the constant is clamped to fp16's largest finite value (as
    # TensorRT clamps weights), not rounded to inf: x / 65504.
    np.testing.assert_allclose(run(plain, feed), feed["x"] / 65504.0, rtol=2e-3, atol=1e-7)
    engine, caught = fp16_build(model, feeds(1))
    (entry,) = engine.header["build"]["fp16_overflow"]["kept_fp32"]
    assert entry == {"layer": "shrink", "op": "Div", "tensor": "k", "amax": 1e6, "role": "reads constant",
                     "fused_from": []}
    assert "constant 'k' of magnitude 1e+06, which fp16 rounds to inf" in str(caught[0].message)
    np.testing.assert_array_equal(run(engine, feed), run(builder.build(model, BuildConfig(device="cpu")), feed))


def test_margin_keeps_half_of_fp16_range() -> None:
    """x * 2e4 / 2e4: at |x| = 1.5 the middle step is 3e4 < LIMIT, nothing kept; at |x| = 2 it is
    4e4, which fp16 still holds, but above LIMIT = 32752: kept."""
    model = _model("margin", [helper.make_node("Mul", ["x", "k1"], ["a"], name="mul"),
                              helper.make_node("Div", ["a", "k2"], ["y"], name="div")],
                   [_scalar("k1", 2e4), _scalar("k2", 2e4)])
    below, caught = fp16_build(model, feeds(amax=1.5))
    assert not caught and below.header["build"]["fp16_overflow"]["kept_fp32"] == []
    assert all(d == "float16" for n, d in step_dtypes(below).items() if not n.endswith("_cast"))
    above, caught = fp16_build(model, feeds(amax=2.0))
    (entry,) = above.header["build"]["fp16_overflow"]["kept_fp32"]
    assert entry["amax"] == pytest.approx(4e4, rel=1e-6) and len(caught) == 1


def test_user_rule_overrides_the_check() -> None:
    """--layer-precision up=fp16 wins: 'up' computes in fp16 (and overflows), reported as overridden."""
    engine, caught = fp16_build(matmuls(), feeds(), layer_precision=(("up", "fp16"),))
    report = engine.header["build"]["fp16_overflow"]
    assert [k["layer"] for k in report["kept_fp32"]] == ["down"]
    assert [(o["layer"], o["rule"]) for o in report["overridden"]] == [("up", "up=fp16")]
    assert step_dtypes(engine)["up"] == "float16" and step_dtypes(engine)["down"] == "float32"
    texts = [str(w.message) for w in caught]
    assert any("layer 'up' (MatMul) is kept in fp16 by the layer precision rule up=fp16" in t and
               "may be inf or NaN" in t for t in texts)


def test_bf16_and_fp32_builds_do_not_check() -> None:
    """bf16 has fp32's exponent range: the 1e5 tensor is finite there, and no check runs."""
    for precision in ("bf16", "fp32"):
        engine, caught = fp16_build(matmuls(), feeds(), precision=precision)
        assert not caught and "fp16_overflow" not in engine.header["build"]
        assert np.isfinite(run(engine, feeds()[0])).all()


def test_empty_calibration_data_is_an_error() -> None:
    with pytest.raises(KilnError, match="gave no batches .* fp16 overflow"):
        builder.build(scaled(), BuildConfig(device="cpu", precision="fp16"), calibration=[])


def test_cli_build_fp16_with_calib_data(tmp_path: Path) -> None:
    model, data, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "m.kiln"
    onnx.save(matmuls(), model)
    np.savez(data, x=np.concatenate([f["x"] for f in feeds()]))
    runner = CliRunner()
    result = runner.invoke(build_command, [str(model), "-o", str(out), "--precision", "fp16", "--calib-data",
                                           str(data), "--calib-batch-size", "4", "--device", "cpu", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    info = json.loads(result.stdout)
    assert [k["layer"] for k in info["fp16_overflow"]["kept_fp32"]] == ["up", "down"]
    assert info["fp16_overflow"]["batches"] == 3 and info["precision"] == "fp16"
    assert result.stderr.count("warning: layer ") == 2
    assert "warning: layer 'up' (MatMul) is kept in fp32" in result.stderr
    engine = load(out)
    feed = feeds(1, seed=5)[0]
    np.testing.assert_allclose(run(engine, feed), run(builder.build(matmuls(), BuildConfig(device="cpu")), feed),
                               rtol=2e-2, atol=2e-2 * np.abs(run(engine, feed)).max())

    text = runner.invoke(build_command, [str(model), "-o", str(out), "--fp16", "--calib-data", str(data),
                                         "--device", "cpu"])
    assert text.exit_code == 0 and "2 layer(s) kept in fp32 (up: max" in text.stdout
    plain = runner.invoke(build_command, [str(model), "-o", str(out), "--fp16", "--device", "cpu", "--json"])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["fp16_overflow"] is None and "warning" not in plain.stderr
    bf16 = runner.invoke(build_command, [str(model), "-o", str(out), "--bf16", "--calib-data", str(data),
                                         "--device", "cpu"])
    assert bf16.exit_code != 0 and "calib_data is only read by" in str(bf16.exception)


def attention_with_mask(mask_op: str) -> onnx.ModelProto:
    """softmax(x @ x^T * 0.35 + bias) @ x over [1, 2, 4, 8], the additive mask bias built from a
    0/1 key mask m [1, 1, 1, 4] the way exporters write it: Where(m == 0, -3.4e38, 0) ("Where")
    or (1 - m) * -3.4e38 ("Mul")."""
    big = float(np.finfo(np.float32).min)
    if mask_op == "Where":
        mask_nodes = [helper.make_node("Equal", ["m", "zero"], ["off"], name="is_pad"),
                      helper.make_node("Where", ["off", "neg", "zero"], ["bias"], name="mask")]
    else:
        mask_nodes = [helper.make_node("Sub", ["one", "m"], ["off"], name="invert"),
                      helper.make_node("Mul", ["off", "neg"], ["bias"], name="mask")]
    nodes = [*mask_nodes,
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2], name="kt"),
             helper.make_node("MatMul", ["x", "xt"], ["s"], name="qk"),
             helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale"),
             helper.make_node("Add", ["ss", "bias"], ["a"], name="add_mask"),
             helper.make_node("Softmax", ["a"], ["p"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["p", "x"], ["y"], name="pv")]
    shape = [1, 2, 4, 8]
    graph = helper.make_graph(
        nodes, f"attention_{mask_op}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [_scalar("zero", 0.0), _scalar("one", 1.0), _scalar("neg", big), _scalar("scale", 0.35)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("mask_op", ["Where", "Mul"])
def test_negative_attention_mask_keeps_the_attention_in_fp16(mask_op: str) -> None:
    """A -3.4e38 mask read only by kiln::Attention is -inf in fp16 with the same softmax: the
    attention stays fp16; the layer reading the constant keeps fp32 (in fp16 the Mul form would
    compute 0 * -inf = NaN), and the engine matches fp32."""
    rng = np.random.default_rng(5)
    m = np.array([1, 1, 1, 0], np.float32).reshape(1, 1, 1, 4)
    data = [{"x": rng.standard_normal((1, 2, 4, 8)).astype(np.float32), "m": m} for _ in range(2)]
    model = attention_with_mask(mask_op)
    engine, caught = fp16_build(model, data)
    report = engine.header["build"]["fp16_overflow"]
    kept = [(k["layer"], k["role"]) for k in report["kept_fp32"]]
    assert len(kept) == 1 and kept[0][1] in ("reads constant", "computes"), kept  # computes: fused in a program
    ops = {s.name: s.op for s in engine.plan.steps}
    attention = [name for name, op in ops.items() if op == "kiln::Attention"]
    assert len(attention) == 1 and step_dtypes(engine)[attention[0]] == "float16"
    assert step_dtypes(engine)[kept[0][0]] == "float32" and len(caught) == 1
    fp32 = builder.build(model, BuildConfig(device="cpu"))
    feed = {"x": rng.standard_normal((1, 2, 4, 8)).astype(np.float32), "m": m}
    want, got = np.asarray(fp32(**feed)["y"]), np.asarray(engine(**feed)["y"])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("mask_op", ["Where", "Mul"])
def test_mask_constant_clamped_without_calibration_data(mask_op: str) -> None:
    """Without calibration data (no overflow check) the -3.4e38 mask constant is clamped to
    -65504 in fp16, inline in a fused program or as a tensor: no kernel is handed a scalar its
    type cannot hold, and the Mul form computes 0 * -65504 = 0 where -inf would give NaN."""
    model = attention_with_mask(mask_op)
    engine, caught = fp16_build(model, None)
    assert not caught
    for step in engine.plan.steps:
        for instr in step.attrs.get("program", []):
            for arg in instr[1]:
                if isinstance(arg, dict) and arg.get("dtype") == "float16":
                    assert abs(arg["const"]) <= 65504.0, (step.name, arg)
    m = np.array([1, 1, 1, 0], np.float32).reshape(1, 1, 1, 4)
    feed = {"x": np.random.default_rng(6).standard_normal((1, 2, 4, 8)).astype(np.float32), "m": m}
    want = np.asarray(builder.build(model, BuildConfig(device="cpu"))(**feed)["y"])
    got = np.asarray(engine(**feed)["y"])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_retype_clamps_finite_constants_only() -> None:
    import torch

    from kiln.ir import dtypes
    from kiln.precision.retype import _convert, in_range

    got = _convert(np.array([-3.4e38, 7e4, 1.5, np.inf, -np.inf, np.nan], np.float32), dtypes.FLOAT16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got[:5], np.array([-65504, 65504, 1.5, np.inf, -np.inf], np.float16))
    assert np.isnan(got[5])
    assert in_range(-3.4e38, dtypes.FLOAT16) == -65504.0 and in_range(float("-inf"), dtypes.FLOAT16) == float("-inf")
    assert in_range(-3.0e38, dtypes.BFLOAT16) == -3.0e38            # within bfloat16's range
    # float32's lowest is past bfloat16's largest (3.39e38), where it would round to -inf.
    assert in_range(float(np.finfo(np.float32).min), dtypes.BFLOAT16) == -float(torch.finfo(torch.bfloat16).max)
    bf = _convert(torch.tensor([-3.4e38]), dtypes.BFLOAT16)
    assert torch.isfinite(bf).all()


def test_report_round_trips_through_the_header() -> None:
    model = matmuls()
    engine, _ = fp16_build(model, feeds())
    data = engine.header["build"]["fp16_overflow"]
    report = OverflowReport.from_json(data)
    assert report.to_json() == data and [o.layer for o in report.kept] == ["up", "down"]
    # reused by a later build of the same model: the same layers kept, with no new measurement
    again = builder.build(model, BuildConfig(precision="fp16", device="cpu", tune=False), calibration=feeds(),
                          overflow=report)
    assert again.header["build"]["fp16_overflow"] == data and step_dtypes(again) == step_dtypes(engine)

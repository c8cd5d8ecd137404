"""The accuracy-budget search on CPU, with small MLPs built in fp16.

Model: x[8,16] -> fc1 (MatMul + Relu, fused) -> fc2 -> fc3 -> y. With `big`, fc1's columns
come in identical pairs and fc2's weights in pairs +-(1e5 + small): the 1e5 terms cancel
exactly, so fc2's output is moderate in fp32, but its weights overflow fp16 (max 65504) to
inf and the fp16 engine's output is inf/NaN. Keeping fc2 alone in fp32 fixes it.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.compiler.accuracy_budget import BudgetResult, check_budget, parse_budget, search
from kiln.compiler.builder import build
from kiln.config import BuildConfig, Profile
from kiln.errors import BuildError, KilnError

FP16 = BuildConfig(precision="fp16", device="cpu", tune=False)


def mlp(big: bool, batch: int | str = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    half = rng.standard_normal((16, 8)) / 4
    w1 = np.repeat(half, 2, axis=1)  # columns 2i and 2i+1 equal: fc1's outputs come in equal pairs
    small = rng.standard_normal((16, 16)) / 4
    w2 = small.copy()
    # rows 2i and 2i+1: +(1e5 + a) and -(1e5) + b, so a1[2i] * (a + b) survives in fp32; fp16
    # clamps both to +-65504 (beyond its range), whose products cancel: fc2's output is lost (0).
    if big:
        w2[0::2] += 1e5
        w2[1::2] -= 1e5
    w3 = rng.standard_normal((16, 16)) / 4
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in (("w1", w1), ("w2", w2), ("w3", w3))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="fc3")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])
    m = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def cosine_vs_fp32(model: onnx.ModelProto, config: BuildConfig) -> float:
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32))
    ref = build(model, BuildConfig(device="cpu", tune=False)).run_tensors({"x": x})["y"].double().numpy().ravel()
    out = build(model, config).run_tensors({"x": x})["y"].double().numpy().ravel()
    if not np.isfinite(out).all():
        return float("-inf")
    norms = np.linalg.norm(ref) * np.linalg.norm(out)
    return float(ref @ out / norms) if norms else 0.0   # a zero output: cosine 0, as the search measures it


def test_overflowing_layer_is_kept_and_the_config_meets_the_budget() -> None:
    model = mlp(big=True)
    assert cosine_vs_fp32(model, FP16) == 0.0  # plain fp16: fc2's clamped weights cancel, output 0
    result = search(model, FP16, ("cosine", 0.999))
    assert isinstance(result, BudgetResult)
    assert result.reduced == 0.0
    assert [k.name for k in result.kept] == ["fc2"]
    assert result.kept[0].op == "MatMul" and result.kept[0].sensitivity == 0.0
    assert result.achieved >= 0.999
    assert result.config.layer_precision == (("fc2", "fp32"),)
    assert result.config.tune is False and result.config.precision == "fp16"
    assert result.candidates == 3  # FusedMatMul(fc1, relu1), fc2, fc3
    assert result.builds == 2 + 1 + 3 + 2  # reference, reduced, all kept, ranking, bisection over [1, 3]
    assert cosine_vs_fp32(model, result.config) >= 0.999
    assert result.to_json()["kept"] == [{"layer": "fc2", "op": "MatMul", "sensitivity": 0.0}]


def test_model_within_budget_keeps_nothing() -> None:
    result = search(mlp(big=False), FP16, parse_budget("cosine=0.999"))
    assert result.kept == () and result.candidates == 0 and result.builds == 2
    assert result.config == FP16 and result.achieved >= 0.999


def test_user_rules_are_kept_first() -> None:
    config = BuildConfig(precision="fp16", device="cpu", tune=False, layer_precision=(("fc3", "fp32"),))
    result = search(mlp(big=True), config, ("max_abs", 1.0))
    assert result.config.layer_precision == (("fc3", "fp32"), ("fc2", "fp32"))
    assert result.candidates == 2  # fc3 is already kept wider by the user's rule


def test_impossible_budget_raises_with_the_best_value() -> None:
    # Only fc1 is ranked (max_candidates=1): keeping it does not save fc2's weights.
    with pytest.raises(BuildError, match=r"cosine=0.999 cannot be met: with all 1 candidate layers kept in fp32 "
                                         r"the fp16 engine reaches cosine=0 "):
        search(mlp(big=True), FP16, ("cosine", 0.999), max_candidates=1)


def test_given_feeds_are_used() -> None:
    feeds = [{"x": np.zeros((8, 16), np.float32)}]  # zeros: every engine is exact
    result = search(mlp(big=False), FP16, ("max_abs", 0.0), feeds=feeds)
    assert result.kept == () and result.achieved == 0.0


def test_reduced_precision_is_required() -> None:
    with pytest.raises(BuildError, match="reduced-precision engine"):
        search(mlp(big=False), BuildConfig(device="cpu"), ("cosine", 0.99))


@pytest.mark.parametrize("text, message", [
    ("cosine", "is not METRIC=VALUE"),
    ("cosine=high", "is not a number"),
    ("l2=0.1", "metric 'l2' is not known; choose one of cosine, max_abs, mean_abs"),
    ("cosine=1.5", "within \\[-1, 1\\]"),
    ("max_abs=-1", ">= 0"),
    ("mean_abs=nan", ">= 0"),
])
def test_budget_parsing_errors(text: str, message: str) -> None:
    with pytest.raises(KilnError, match=message):
        parse_budget(text)


def test_budget_parsing() -> None:
    assert parse_budget("cosine=0.999") == ("cosine", 0.999)
    assert parse_budget("max_abs=1e-2") == ("max_abs", 0.01)
    assert check_budget(("mean_abs", 0)) == ("mean_abs", 0.0)


def test_cli_build_with_an_accuracy_budget(tmp_path) -> None:
    import json

    import onnx as onnx_lib
    from click.testing import CliRunner

    from kiln.cli.main import main
    path = tmp_path / "mlp.onnx"
    onnx_lib.save(mlp(big=True), str(path))
    result = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "mlp.kiln"), "--fp16",
                                       "--device", "cpu", "--accuracy-budget", "cosine=0.999", "--json"])
    assert result.exit_code == 0, result.output
    budget = json.loads(result.stdout)["accuracy_budget"]
    assert [k["layer"] for k in budget["kept"]] == ["fc2"] and budget["achieved"] >= 0.999
    assert budget["batches"] == 3   # the default: three synthetic batches
    bad = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "x.kiln"), "--fp16",
                                    "--device", "cpu", "--accuracy-budget", "speed=2"])
    assert bad.exit_code != 0 and "speed" in bad.output
    alone = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "x.kiln"), "--fp16",
                                      "--device", "cpu", "--budget-batches", "5"])
    assert alone.exit_code != 0 and "--budget-batches 5" in alone.output and "no --accuracy-budget" in alone.output
    assert "Traceback" not in alone.output and not (tmp_path / "x.kiln").exists()
    five = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "five.kiln"), "--fp16", "--device",
                                     "cpu", "--accuracy-budget", "cosine=0.999", "--budget-batches", "5", "--json"])
    assert five.exit_code == 0, five.output
    assert json.loads(five.stdout)["accuracy_budget"]["batches"] == 5


@pytest.mark.parametrize("batches", [0, -1, True, 2.0])
def test_budget_batches_must_be_a_whole_number(batches) -> None:
    with pytest.raises(KilnError, match="budget batches .* is not a whole number >= 1"):
        BuildConfig(precision="fp16", budget_batches=batches)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_budget_keeps_quantized_layers_only(precision: str) -> None:
    # A budget tighter than the plain quantized engine reaches: the search keeps some of the
    # quantized matmuls in fp32 (never another op) and the returned config meets the budget.
    model = mlp(big=False)
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)]
    config = BuildConfig(precision=precision, device="cpu", tune=False)
    plain = search(model, config, ("cosine", -1.0), calibration=calib)
    assert plain.kept == ()
    target = min(1.0, plain.reduced + (1.0 - plain.reduced) * 0.9)   # most of the way to exact
    result = search(model, config, ("cosine", target), calibration=calib)
    assert result.kept and result.achieved >= target and result.candidates == 3
    assert {k.op for k in result.kept} <= {"MatMul", "kiln::FusedMatMul"}   # fc1 is fused with its Relu
    assert result.config.layer_precision and all(p == "fp32" for _, p in result.config.layer_precision)


def test_calibration_batches_outside_the_profile_are_cut_to_its_batch() -> None:
    # Calibration in batches of 8, an engine for batches 16..32: the search measures on the
    # calibration samples cut into batches of the profile's opt batch (16), not on batches the
    # engine refuses.
    profile = Profile.from_ranges({"x": ((16, 16), (16, 16), (32, 16))})
    config = BuildConfig(precision="int8", device="cpu", tune=False, profiles=(profile,))
    result = search(mlp(big=False, batch="n"), config, ("cosine", 0.9), calibration=_calibration())
    assert result.achieved >= 0.9 and result.kept == ()



@pytest.mark.parametrize("batches, held_out", [(6, 3), (3, 0)])
def test_gptq_search_measures_on_batches_its_builds_did_not_calibrate_on(batches: int, held_out: int) -> None:
    # GPTQ fits the weights to its calibration inputs: the search's builds calibrate on the
    # batches the budget is not measured on (none left with 3 batches: measured in sample).
    rng = np.random.default_rng(5)
    calib = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(batches)]
    config = BuildConfig(precision="fp8", device="cpu", tune=False, weight_rounding="gptq")
    said: list[str] = []
    result = search(mlp(big=False), config, ("cosine", -1.0), calibration=calib, progress=said.append)
    assert result.held_out == held_out and result.to_json()["held_out_batches"] == held_out
    assert any(f"GPTQ calibrates on {batches - held_out} batch(es)" in m for m in said) == bool(held_out)
    from kiln.cli.build_summary import budget_line
    line = budget_line(result.to_json())
    assert ("; measured on 3 calibration batch(es) GPTQ did not calibrate on" in line) == bool(held_out), line
    # With none left to hold out the search says it measured in sample, and the summary too.
    assert result.gptq_in_sample == (not held_out) and result.to_json()["gptq_in_sample"] == (not held_out)
    assert any("GPTQ also calibrates on" in m for m in said) == (not held_out)
    assert ("; measured on the batches GPTQ calibrated on" in line) == (not held_out), line
    nearest = search(mlp(big=False), replace(config, weight_rounding="nearest"), ("cosine", -1.0), calibration=calib)
    assert nearest.held_out == 0 and not nearest.gptq_in_sample


def test_budget_batches_sets_the_batches_measured_on() -> None:
    # Eight calibration batches, the budget measured on five: GPTQ's search builds calibrate on
    # the other three; without GPTQ the five are measured on all the same.
    rng = np.random.default_rng(6)
    calib = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(8)]
    config = BuildConfig(precision="fp8", device="cpu", tune=False, weight_rounding="gptq", budget_batches=5)
    said: list[str] = []
    result = search(mlp(big=False), config, ("cosine", -1.0), calibration=calib, progress=said.append)
    assert (result.batches, result.held_out) == (5, 5)
    assert any("GPTQ calibrates on 3 batch(es), the budget is measured on the other 5" in m for m in said), said
    nearest = search(mlp(big=False), replace(config, weight_rounding="nearest"), ("cosine", -1.0), calibration=calib)
    assert (nearest.batches, nearest.held_out) == (5, 0)
    from kiln.cli.build_summary import budget_line
    assert "; measured on 5 batch(es)" in budget_line(nearest.to_json())
    # More batches measured on than calibration has: all of it, and GPTQ is measured in sample.
    every = search(mlp(big=False), replace(config, budget_batches=12), ("cosine", -1.0), calibration=calib)
    assert (every.batches, every.held_out, every.gptq_in_sample) == (8, 0, True)
    assert "batch(es)" not in budget_line(every.to_json())   # only: measured on the batches GPTQ calibrated on


def _calibration(seed: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)]


def test_quantized_budget_keeps_layers_in_the_engines_float_precision() -> None:
    # int8 with fp16 float layers (TensorRT's --int8 --fp16): a kept matmul computes in fp16,
    # as the engine's other float layers do, and the plan says so.
    model, calib = mlp(big=False), _calibration()
    config = BuildConfig(precision="int8", float_precision="fp16", device="cpu", tune=False)
    plain = search(model, config, ("cosine", -1.0), calibration=calib)
    assert plain.kept == () and plain.kept_precision == "fp16"
    target = min(1.0, plain.reduced + (1.0 - plain.reduced) * 0.9)
    result = search(model, config, ("cosine", target), calibration=calib)
    assert result.kept and result.achieved >= target and result.kept_precision == "fp16"
    assert all(p == "fp16" for _, p in result.config.layer_precision)
    assert result.to_json()["kept_precision"] == "fp16"
    # Builds: reference, reduced, all kept, 3 ranked, ceil(log2 3) = 2 searched at most.
    assert result.builds <= 2 + 1 + 3 + 2


@pytest.mark.filterwarnings("ignore:layer 'fc2':UserWarning")   # the fc2=fp16 trial overflows, as meant
def test_quantized_budget_falls_back_to_fp32_where_the_float_precision_misses() -> None:
    # fc2's weights overflow fp16: kept in fp16 it computes 0 (module docstring), so every
    # candidate in fp16 misses the budget and the search keeps layers in fp32 instead.
    model = mlp(big=True)
    config = BuildConfig(precision="int8", float_precision="fp16", device="cpu", tune=False)
    messages: list[str] = []
    result = search(model, config, ("cosine", 0.999), calibration=_calibration(), progress=messages.append)
    assert result.kept_precision == "fp32" and result.achieved >= 0.999
    assert "fc2" in [k.name for k in result.kept]
    assert all(p == "fp32" for _, p in result.config.layer_precision)
    assert any("in fp16 gives" in m and "trying fp32" in m for m in messages)


def test_cli_int8_fp16_budget_keeps_layers_in_fp16(tmp_path) -> None:
    # --int8 --fp16: the layers the budget keeps run in fp16, like the engine's other float layers.
    import onnx as onnx_lib
    from click.testing import CliRunner

    from kiln.cli.main import main
    path = tmp_path / "mlp.onnx"
    onnx_lib.save(mlp(big=False), str(path))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_calibration()):
        np.savez(calib / f"batch{i}.npz", **feed)
    result = CliRunner().invoke(main, ["build", str(path), "-o", str(tmp_path / "mlp.kiln"), "--int8", "--fp16",
                                       "--calib-data", str(calib), "--device", "cpu", "--accuracy-budget",
                                       "cosine=0.99999"])
    assert result.exit_code == 0, result.output
    assert "layer(s) kept in fp16 of 3 ranked" in " ".join(result.output.split()), result.output


def test_plan_speed_is_reported_and_a_slower_plan_warned(monkeypatch) -> None:
    # A tuned build with a budget times its engine against the engine with every layer in the kept
    # type (here fp16, the float precision of --int8 --fp16), built for the comparison.
    from kiln.compiler import plan_speed
    model, calib = mlp(big=False), _calibration()
    timed: list[str] = []

    def fake_time(engine, timer) -> float:  # noqa: ANN001
        timed.append(engine.header["build_config"]["precision"])
        return {"int8": 2.0, "fp16": 1.0}[timed[-1]]

    monkeypatch.setattr(plan_speed, "_time_engine", fake_time)
    config = BuildConfig(precision="int8", float_precision="fp16", device="cpu", accuracy_budget=("cosine", 0.99999))
    with pytest.warns(plan_speed.SlowPlanWarning,
                      match=r"runs in 2 ms, slower than the fp16 engine it would replace \(1 ms, 0.50x\)"):
        engine = build(model, config, calibration=calib, timer=lambda fn, n: (fn(), [0.01] * n)[1])
    assert timed == ["int8", "fp16"]
    budget = engine.header["build"]["accuracy_budget"]
    assert budget["speed"] == {"engine_ms": 2.0, "wider_ms": 1.0, "wider_precision": "fp16", "speedup": 0.5}
    from kiln.cli.build_summary import budget_line
    assert budget_line(budget).endswith("; runs in 2 ms, 0.50x the fp16 engine's 1 ms")
    # untuned (a CPU build without a timer): no speed to report
    untuned = build(model, config, calibration=calib)
    assert "speed" not in untuned.header["build"]["accuracy_budget"] and timed == ["int8", "fp16"]
    # per-tensor weight scales: the fp16 engine compared with takes no weight scales of its own
    with pytest.warns(plan_speed.SlowPlanWarning):
        build(model, replace(config, weight_scales="tensor"), calibration=calib,
              timer=lambda fn, n: (fn(), [0.01] * n)[1])
    assert timed == ["int8", "fp16", "int8", "fp16"]


def test_time_engine_is_the_median_of_timed_runs() -> None:
    from kiln.compiler.plan_speed import SPEED_REPEATS, _time_engine
    engine = build(mlp(big=False), BuildConfig(device="cpu"))
    runs: list[int] = []

    def timer(fn, repeats: int) -> list[float]:  # noqa: ANN001
        out = fn()
        assert set(out) == {"y"} and tuple(out["y"].shape) == (8, 16)
        runs.append(repeats)
        return [3.0, 1.0, 2.0] + [2.5] * (repeats - 3)

    assert _time_engine(engine, timer) == 2.5 and runs == [SPEED_REPEATS]


def scaled_output() -> onnx.ModelProto:
    """mlp(big=False) with y = fc3's output times 1e5: the Mul writes beyond fp16's range on any
    input, so an engine with fp16 float layers keeps it in fp32."""
    m = mlp(big=False)
    m.graph.node[-1].output[0] = "h3"
    m.graph.initializer.append(numpy_helper.from_array(np.array(1e5, np.float32), "big"))
    m.graph.node.append(helper.make_node("Mul", ["h3", "big"], ["y"], name="scale"))
    return m


def test_search_builds_reuse_the_overflow_check(monkeypatch) -> None:
    # int8 with fp16 float layers and calibration data: only the reduced and the all-kept builds
    # measure fp16 overflow; the ranking and bisection builds reuse their findings (the Mul kept in
    # fp32, else every engine's output is inf) and reach what fresh checks reach.
    import kiln.compiler.accuracy_budget as budget_module
    import kiln.compiler.builder as builder_module

    model, calib = scaled_output(), _calibration()
    config = BuildConfig(precision="int8", float_precision="fp16", device="cpu", tune=False)
    with pytest.warns(UserWarning, match="layer 'scale'"):
        plain = search(model, config, ("cosine", -1.0), calibration=calib)
    target = min(1.0, plain.reduced + (1.0 - plain.reduced) * 0.9)
    checks: list[int] = []
    measure = builder_module.fp16_overflow

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        checks.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(builder_module, "fp16_overflow", counted)
    with pytest.warns(UserWarning, match="layer 'scale'"):
        reused = search(model, config, ("cosine", target), calibration=calib)
    assert reused.kept and reused.achieved >= target and len(checks) == 2 < reused.builds - 1
    fresh_build = budget_module._Runner.build
    monkeypatch.setattr(budget_module._Runner, "build",
                        lambda self, rules, precision=None, check=False: fresh_build(self, rules, precision, True))
    checks.clear()
    with pytest.warns(UserWarning, match="layer 'scale'"):
        fresh = search(model, config, ("cosine", target), calibration=calib)
    assert len(checks) == fresh.builds - 1  # every build but the fp32 reference
    assert [k.name for k in fresh.kept] == [k.name for k in reused.kept] and fresh.achieved == reused.achieved
    assert [k.sensitivity for k in fresh.kept] == [k.sensitivity for k in reused.kept]

"""Tuning inside build(): on CPU with fake tactics and a fake timer (a GPU build tunes for real).

Model: x[4,8] -> Relu -> Softmax -> Abs -> y. Fake Relu tactics: one fast, one wrong, one
slow; Softmax and Abs have only their reference, so they are never timed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuning_fakes import UNLOGGED, FakeTimer, failing, fake, registered, relu, wrong_relu  # noqa: E402

import kiln  # noqa: E402
from kiln.compiler.builder import build  # noqa: E402
from kiln.compiler.timing_cache import TimingCacheWarning  # noqa: E402
from kiln.compiler.tuning_pass import TuningStoppedWarning  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402
from kiln.engine.serialize import plan_from_json, plan_to_json  # noqa: E402
from kiln.tactics import TacticQuery  # noqa: E402

TIMES = {"Relu.test_fast": 1.0, "Relu.test_wrong": 0.1, "Relu.test_slow": 4.0, UNLOGGED: 3.0}


def model(dim0: int | str = 4) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim0, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim0, 8])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["s"], name="softmax", axis=-1),
             helper.make_node("Abs", ["s"], ["y"], name="abs")]
    m = helper.make_model(helper.make_graph(nodes, "tune_me", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture()
def log() -> list[str]:
    return []


@pytest.fixture()
def fakes(log: list[str]):  # noqa: ANN201
    with registered(fake("Relu.test_fast", "Relu", relu, log), fake("Relu.test_wrong", "Relu", wrong_relu, log),
                    fake("Relu.test_slow", "Relu", relu, log)):
        yield


def steps_by_name(engine: kiln.Engine) -> dict:
    return {s.name: s for s in engine.plan.steps}


def test_build_tunes_each_step_with_more_than_one_candidate(fakes: None, log: list[str]) -> None:
    timer = FakeTimer(TIMES, log)
    messages: list[str] = []
    engine = build(model(), BuildConfig(device="cpu"), progress=messages.append, timer=timer)
    steps = steps_by_name(engine)
    relu_step = steps["relu"]
    assert relu_step.tactic == "Relu.test_fast"
    t = relu_step.tuning
    assert (t.ms, t.runner_up, t.runner_up_ms, t.candidates, t.cached) == (1.0, "Relu.reference", 3.0, 4, False)
    assert steps["softmax"].tuning is None and steps["abs"].tuning is None  # one candidate: not timed
    assert {n for n, _ in timer.calls} == {"Relu.test_fast", "Relu.test_slow", UNLOGGED}
    assert "tuning layer 1/3" in messages and "planning memory" in messages
    summary = engine.header["build"]["tuning"]
    assert summary["layers_timed"] == 1 and summary["cache_hits"] == 0
    assert summary["rejected"][0]["tactic"] == "Relu.test_wrong" and summary["rejected"][0]["status"] == "invalid"
    assert engine.plan.memory.peak_bytes > 0  # the tuning run also sized the activations
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    want = np.abs(torch.softmax(torch.relu(torch.from_numpy(x)), -1).numpy())
    np.testing.assert_allclose(engine(x)["y"], want, rtol=1e-6, atol=1e-7)


def test_cold_then_warm_build_with_a_timing_cache(fakes: None, log: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "timing.json"
    config = BuildConfig(device="cpu", timing_cache=str(cache))
    cold_timer, warm_timer = FakeTimer(TIMES, log), FakeTimer(TIMES, log)
    build(model(), config, timer=cold_timer)
    assert cold_timer.calls and cache.is_file()
    warm = build(model(), config, timer=warm_timer)
    assert warm_timer.calls == []
    assert warm.header["build"]["tuning"]["cache_hits"] == 1
    relu_step = steps_by_name(warm)["relu"]
    assert relu_step.tactic == "Relu.test_fast" and relu_step.tuning.cached and relu_step.tuning.ms == 1.0
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 4 and any("Relu.test_wrong@1" in k and e["status"] == "invalid" for k, e in entries.items())


def test_a_corrupt_timing_cache_warns_and_is_rebuilt(fakes: None, log: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "timing.json"
    cache.write_text('{"format": "kiln-timing-cache", "entries": [trunc')
    with pytest.warns(TimingCacheWarning):
        engine = build(model(), BuildConfig(device="cpu", timing_cache=str(cache)), timer=FakeTimer(TIMES, log))
    assert steps_by_name(engine)["relu"].tactic == "Relu.test_fast"
    assert len(json.loads(cache.read_text())["entries"]) == 4


def test_no_tuning_on_cpu_without_a_timer_or_with_tune_off(fakes: None, log: list[str]) -> None:
    engine = build(model(), BuildConfig(device="cpu"))
    assert steps_by_name(engine)["relu"].tactic == "Relu.test_fast"  # first supported, untimed
    assert all(s.tuning is None for s in engine.plan.steps)
    assert engine.header["build"]["tuning"].startswith("off")
    timer = FakeTimer(TIMES, log)
    engine = build(model(), BuildConfig(device="cpu", tune=False), timer=timer)
    assert timer.calls == [] and all(s.tuning is None for s in engine.plan.steps)


def test_a_tactic_must_accept_the_symbolic_shapes_too(log: list[str]) -> None:
    def static_only(q: TacticQuery) -> bool:
        return q.device == "cpu" and all(s is not None and all(isinstance(d, int) for d in s) for s in q.input_shapes)

    with registered(fake("Relu.test_static", "Relu", relu, log, supports=static_only)):
        times = {"Relu.test_static": 0.5, UNLOGGED: 1.0}
        ranged = (Profile.from_ranges({"x": ([1, 8], [4, 8], [16, 8])}),)
        dynamic = build(model("N"), BuildConfig(device="cpu", profiles=ranged), timer=FakeTimer(times, log))
        assert steps_by_name(dynamic)["relu"].tactic == "Relu.reference"
        fixed = build(model(), BuildConfig(device="cpu"), timer=FakeTimer(times, log))
        assert steps_by_name(fixed)["relu"].tactic == "Relu.test_static"


def test_tuning_records_survive_save_and_load_and_old_plans_still_load(fakes: None, log: list[str],
                                                                       tmp_path: Path) -> None:
    engine = build(model(), BuildConfig(device="cpu"), timer=FakeTimer(TIMES, log))
    path = tmp_path / "tuned.kiln"
    engine.save(path)
    loaded = kiln.load(path)
    assert steps_by_name(loaded)["relu"].tuning == steps_by_name(engine)["relu"].tuning
    data, tensors = plan_to_json(engine.plan)
    assert "tuning" in data["steps"][0] and "tuning" not in data["steps"][1]  # written only when present
    for s in data["steps"]:
        s.pop("tuning", None)  # as an engine from before the tuner
    assert all(s.tuning is None for s in plan_from_json(data, tensors).steps)


def test_inspect_shows_the_choice_its_time_and_the_runner_up(fakes: None, log: list[str], tmp_path: Path) -> None:
    from kiln.cli.main import main

    path = tmp_path / "tuned.kiln"
    build(model(), BuildConfig(device="cpu"), timer=FakeTimer(TIMES, log)).save(path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    layer = json.loads(result.stdout)["layers"][0]
    assert layer["tactic"] == "Relu.test_fast"
    assert layer["tuning"] == {"ms": 1.0, "runner_up": "Relu.reference", "runner_up_config": {}, "runner_up_ms": 3.0,
                               "candidates": 4, "cached": False}
    text = CliRunner().invoke(main, ["inspect", str(path)]).stdout
    assert "runner-up" in text and "1.0000 ms" in text and "Relu.reference 3.0000 ms" in text
    assert "1 layers timed" in text


def test_cli_build_takes_the_tuning_options(tmp_path: Path) -> None:
    from kiln.cli.main import main

    onnx.save(model(), str(tmp_path / "m.onnx"))
    args = ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.kiln"), "--device", "cpu",
            "--timing-cache", str(tmp_path / "t.json"), "--json"]
    for extra in ([], ["--no-tune"]):
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["tuning"].startswith("off")
    assert not (tmp_path / "t.json").exists()  # nothing timed on CPU, nothing written


def test_a_failing_tuning_run_warns_and_keeps_the_steps_tuned_before_it(fakes: None, log: list[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Abs's only tactic fails on the synthetic inputs: the run stops at step 3 of 3, Relu (step 1)
    # keeps its tuned choice, and the build says so instead of leaving the rest silently untuned.
    from dataclasses import replace

    from kiln.tactics import registry

    registry._ensure_loaded()
    monkeypatch.setitem(registry.TACTICS, "Abs.reference", replace(registry.TACTICS["Abs.reference"], kernel=failing))
    with pytest.warns(TuningStoppedWarning, match=r"tuning stopped at step 3 of 3 \(StepError.*steps 3 to 3 keep"):
        engine = build(model(), BuildConfig(device="cpu"), timer=FakeTimer(TIMES, log))
    assert "this kernel always fails" in engine.header["build"]["tuning"]["stopped"]
    assert steps_by_name(engine)["relu"].tactic == "Relu.test_fast"


def _tf32_like_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x) * (1 + 5e-4)  # a TF32 kernel's error: over fp32's tolerance, within TF32's


def test_tf32_builds_judge_float32_at_tf32_tolerance_and_cache_apart(log: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "timing.json"
    times = {**TIMES, "Relu.test_tf32": 0.5}
    with registered(fake("Relu.test_fast", "Relu", relu, log), fake("Relu.test_tf32", "Relu", _tf32_like_relu, log)):
        ieee = build(model(), BuildConfig(device="cpu", precision="fp32", timing_cache=str(cache)),
                     timer=FakeTimer(times, log))
        tf32 = build(model(), BuildConfig(device="cpu", precision="tf32", timing_cache=str(cache)),
                     timer=FakeTimer(times, log))
    assert steps_by_name(ieee)["relu"].tactic == "Relu.test_fast"
    assert any(r["tactic"].startswith("Relu.test_tf32") and r["status"] == "invalid"
               for r in ieee.header["build"]["tuning"]["rejected"])
    assert steps_by_name(tf32)["relu"].tactic == "Relu.test_tf32"
    assert tf32.header["build"]["tuning"]["cache_hits"] == 0  # the fp32 build's verdicts are not reused
    keys = json.loads(cache.read_text())["entries"]
    assert any("|tf32|" in k for k in keys) and any("|tf32|" not in k for k in keys)


def test_a_layer_whose_every_kernel_is_rejected_is_named_in_the_build_summary(log: list[str]) -> None:
    """A layer left on the reference because its only kernel's output was wrong: the build summary
    says so by name (the slow layer a user should see), not only as a rejected-candidate count."""
    from kiln.cli.build_summary import fallback_line, reference_fallbacks

    with registered(fake("Relu.test_wrong", "Relu", wrong_relu, log)):
        engine = build(model(), BuildConfig(device="cpu"), timer=FakeTimer(TIMES, log))
    assert steps_by_name(engine)["relu"].tactic == "Relu.reference"
    assert reference_fallbacks(engine) == [{"layer": "relu", "op": "Relu"}]
    assert fallback_line(reference_fallbacks(engine)).startswith("1 layer(s) run on the reference, every kernel "
                                                                 "rejected (Relu: relu);")
    with registered(fake("Relu.test_fast", "Relu", relu, log), fake("Relu.test_wrong", "Relu", wrong_relu, log)):
        engine = build(model(), BuildConfig(device="cpu"), timer=FakeTimer(TIMES, log))
    assert reference_fallbacks(engine) == []          # a rejected kernel, but another one runs the layer

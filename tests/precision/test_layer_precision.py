"""--layer-precision: matching layers keep their own precision, Casts sit at the boundaries, the
decisions are in the header and `kiln inspect`, and a pattern that matches nothing is an error."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import kiln
from kiln.errors import BuildError, KilnError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_models as pm  # noqa: E402

X = np.random.default_rng(7).standard_normal((4, 16)).astype(np.float32)


def _build(precision: str, *rules: tuple[str, str]) -> kiln.Engine:
    return kiln.build(pm.mlp(), kiln.BuildConfig(device="cpu", precision=precision, layer_precision=rules))


def test_fp16_engine_keeps_one_layer_fp32():
    engine = _build("fp16", ("mm2", "fp32"))
    kept, other = pm.step_of(engine, "mm2"), pm.step_of(engine, "mm1")
    assert set(pm.in_dtypes(engine, kept)) == {"float32"}  # fp32 weights and activations
    assert pm.out_dtypes(engine, kept) == ["float32"]
    assert set(pm.in_dtypes(engine, other)) == {"float16"} and pm.out_dtypes(engine, other) == ["float16"]
    casts = [(pm.in_dtypes(engine, s), pm.out_dtypes(engine, s)) for s in engine.plan.steps if s.op == "Cast"]
    # the float32 input into the fp16 region, and the fp16 activation into the fp32 layer; the
    # output is produced in fp32 already, so it needs no Cast
    assert sorted(casts) == [(["float16"], ["float32"]), (["float32"], ["float16"])]
    layers = engine.header["build"]["precision"]["layers"]
    assert len(layers) == 1 and layers[0]["precision"] == "fp32" and "mm2" in layers[0]["fused_from"]
    assert layers[0]["reason"] == "layer precision rule mm2=fp32"
    want = pm.onnxruntime_outputs(pm.mlp(), {"x": X})["y"]
    got = engine(x=X)["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_fp32_engine_runs_one_layer_in_fp16():
    engine = _build("fp32", ("relu", "fp16"))  # relu is fused into mm1: matched through fused_from
    low = pm.step_of(engine, "relu")
    assert pm.out_dtypes(engine, low) == ["float16"] and set(pm.in_dtypes(engine, low)) == {"float16"}
    assert pm.out_dtypes(engine, pm.step_of(engine, "mm2")) == ["float32"]
    want = pm.onnxruntime_outputs(pm.mlp(), {"x": X})["y"]
    np.testing.assert_allclose(engine(x=X)["y"], want, rtol=1e-2, atol=1e-2)


def test_glob_patterns_and_first_rule_wins():
    engine = _build("bf16", ("mm1", "fp16"), ("mm*", "fp32"))
    assert pm.out_dtypes(engine, pm.step_of(engine, "mm1")) == ["float16"]
    assert pm.out_dtypes(engine, pm.step_of(engine, "mm2")) == ["float32"]
    reasons = sorted(l["reason"] for l in engine.header["build"]["precision"]["layers"])
    assert reasons == ["layer precision rule mm*=fp32", "layer precision rule mm1=fp16"]


def test_a_rule_in_the_engine_precision_changes_nothing():
    plain, ruled = _build("fp16"), _build("fp16", ("mm2", "fp16"))
    assert [s.op for s in ruled.plan.steps] == [s.op for s in plain.plan.steps]
    assert ruled.header["build"]["precision"]["layers"] == []


def test_a_pattern_that_matches_nothing_names_it_and_lists_layers():
    with pytest.raises(BuildError) as err:
        _build("fp16", ("encoder/*", "fp32"))
    message = str(err.value)
    assert "'encoder/*'" in message and "matches no layer" in message and "FusedMatMul" in message


@pytest.mark.parametrize("rules, phrase", [
    ((("mm1", "tf32"),), "engine precision only"),
    ((("mm1", "int8"),), "not one a layer can keep"),
    ((("", "fp32"),), "not a (pattern, precision) pair"),
])
def test_config_rejects_bad_rules(rules, phrase):
    with pytest.raises(KilnError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        kiln.BuildConfig(precision="fp16", layer_precision=rules)


def test_config_round_trips_through_json():
    config = kiln.BuildConfig(precision="fp16", layer_precision=(("mm*", "fp32"), ("add", "bf16")))
    again = kiln.BuildConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again.layer_precision == config.layer_precision and not again.strongly_typed
    old = {k: v for k, v in config.to_json().items() if k not in ("layer_precision", "strongly_typed")}
    assert kiln.BuildConfig.from_json(old).layer_precision == ()  # engines from before these fields


def _cli(*args: str):
    from kiln.cli.main import main
    return CliRunner().invoke(main, list(args))


def test_cli_layer_precision_and_inspect(tmp_path):
    onnx.save(pm.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.kiln"
    result = _cli("build", str(tmp_path / "mlp.onnx"), "-o", str(out), "--fp16", "--device", "cpu",
                  "--layer-precision", "mm2=fp32", "--layer-precision", "relu=bf16", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert sorted(l["precision"] for l in info["layer_precision"]) == ["bf16", "fp32"]
    report = json.loads(_cli("inspect", str(out), "--json").stdout)
    assert [l["reason"] for l in report["layer_precision"]] == [l["reason"] for l in info["layer_precision"]]
    text = _cli("inspect", str(out)).stdout
    assert "layer precision" in text and "mm2=fp32" in text and "2 layer(s) in another precision" in text


@pytest.mark.parametrize("rule, phrase", [("mm2", "is not NAME_OR_PATTERN=PRECISION"),
                                           ("mm2=tf32", "tf32 is an engine precision")])
def test_cli_rejects_malformed_rules(tmp_path, rule, phrase):
    onnx.save(pm.mlp(), tmp_path / "mlp.onnx")
    result = _cli("build", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "x.kiln"), "--layer-precision", rule)
    assert result.exit_code == 2 and phrase in result.stderr

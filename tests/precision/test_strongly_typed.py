"""Strongly typed engines keep exactly the types the ONNX graph states (no precision conversion)."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import kiln
from kiln.errors import KilnError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_models as pm  # noqa: E402

X = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float16)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fp16_model_keeps_its_fp16_and_fp32_ops(precision):
    engine = kiln.build(pm.fp16_mixed(), kiln.BuildConfig(device="cpu", precision=precision, strongly_typed=True))
    assert pm.out_dtypes(engine, pm.step_of(engine, "mm")) == ["float16"]
    assert pm.in_dtypes(engine, pm.step_of(engine, "sm")) == ["float32"]
    assert pm.out_dtypes(engine, pm.step_of(engine, "sm")) == ["float32"]  # the model says fp32 softmax
    assert engine.header["build"]["precision"] == {"engine": precision, "strongly_typed": True, "layers": []}
    assert engine.header["build_config"]["strongly_typed"] is True
    got = engine(x=X)["y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), pm.onnxruntime_outputs(pm.fp16_mixed(), {"x": X})["y"],
                               rtol=1e-2, atol=1e-3)


def test_strongly_typed_keeps_a_big_sum_as_stated():
    engine = kiln.build(pm.big_sum(), kiln.BuildConfig(device="cpu", strongly_typed=True))
    assert {d for s in engine.plan.steps for d in pm.out_dtypes(engine, s)} == {"float32"}
    assert not any(s.op == "Cast" for s in engine.plan.steps)


def test_a_reduced_precision_engine_does_convert_the_stated_fp32():
    # the contrast: without strongly typed, an fp16 engine moves the model's fp32 Softmax to fp16
    engine = kiln.build(pm.fp16_mixed(), kiln.BuildConfig(device="cpu", precision="fp16"))
    assert pm.out_dtypes(engine, pm.step_of(engine, "sm")) == ["float16"]


@pytest.mark.parametrize("kwargs, phrase", [
    ({"precision": "fp16"}, "cannot compute in fp16"),
    ({"precision": "bf16"}, "cannot compute in bf16"),
    ({"layer_precision": (("mm", "fp16"),)}, "takes no layer precision rules"),
])
def test_strongly_typed_rejects_conversions(kwargs, phrase):
    with pytest.raises(KilnError, match=phrase):
        kiln.BuildConfig(strongly_typed=True, **kwargs)


def test_cli_strongly_typed(tmp_path):
    from kiln.cli.main import main

    onnx.save(pm.fp16_mixed(), tmp_path / "m.onnx")
    out = tmp_path / "m.kiln"
    ok = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "-o", str(out), "--strongly-typed",
                                   "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "strongly typed" in ok.stdout
    assert kiln.load(out).header["build_config"]["strongly_typed"] is True
    bad = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b.kiln"),
                                    "--strongly-typed", "--fp16"])
    assert bad.exit_code != 0 and "strongly typed" in bad.output and not (tmp_path / "b.kiln").exists()

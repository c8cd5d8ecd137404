"""kiln.accuracy: metrics on hand-made arrays, and compare() on tiny ONNX models (CPU)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.accuracy import compare, default_tolerances, output_metrics
from kiln.accuracy.compare import with_all_outputs
from kiln.accuracy.metrics import cosine, min_row_cosine, top_k_agreement
from kiln.errors import InputError, ModelLoadError

pytest.importorskip("onnxruntime")


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], shape: list[int | str],
           out_shape: list[int | str]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def mlp() -> onnx.ModelProto:
    """x[batch,16] -> MatMul(16x8) -> Add -> Relu -> Softmax -> y[batch,8]"""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    return _model(nodes, inits, ["batch", 16], ["batch", 8])


def overflow() -> onnx.ModelProto:
    """x[4,8] -> Relu -> +1 -> *1e5 -> -1e5 -> *1e-5 -> y: fine in fp32 only. In fp16 the constant
    1e5 is clamped to 65504 (its largest value), so every product is wrong, and inf where a > 1."""
    consts = {"one": 1.0, "big": 1e5, "small": 1e-5}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "one"], ["a"]),
             helper.make_node("Mul", ["a", "big"], ["scaled"]), helper.make_node("Sub", ["scaled", "big"], ["s"]),
             helper.make_node("Mul", ["s", "small"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    return _model(nodes, inits, [4, 8], [4, 8])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accuracy")


@pytest.fixture(scope="module")
def mlp_path(folder: Path) -> Path:
    onnx.save(mlp(), str(folder / "mlp.onnx"))
    return folder / "mlp.onnx"


@pytest.fixture(scope="module")
def overflow_path(folder: Path) -> Path:
    onnx.save(overflow(), str(folder / "overflow.onnx"))
    return folder / "overflow.onnx"


# -- metrics ---------------------------------------------------------------------------------

def test_metrics_exact_numbers() -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    r = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    m = output_metrics("t", a, r, atol=0.5, rtol=0.1)
    assert m.max_abs == 1.0 and m.mean_abs == 0.25
    assert m.max_rel == pytest.approx(0.2) and m.mean_rel == pytest.approx(0.05)
    assert m.cosine == pytest.approx(34 / math.sqrt(30 * 39))
    assert m.min_row_cosine == pytest.approx(29 / math.sqrt(25 * 34))  # row [3, 4] vs [3, 5]
    # |4 - 5| = 1 <= 0.5 + 0.1 * 5: on the bound, which passes (allclose uses <=).
    assert m.passed and m.mismatches == 0 and m.tolerance_ratio == pytest.approx(1.0)
    tight = output_metrics("t", a, r, atol=0.5, rtol=0.09)
    assert not tight.passed and tight.mismatches == 1


def test_metrics_agree_with_allclose() -> None:
    rng = np.random.default_rng(1)
    r = rng.standard_normal((8, 5))
    a = r + rng.standard_normal((8, 5)) * 1e-3
    for atol, rtol in ((1e-3, 1e-3), (1e-4, 1e-4), (0.0, 1e-2)):
        assert output_metrics("t", a, r, atol, rtol).passed == np.allclose(a, r, rtol=rtol, atol=atol)


def test_metrics_nonfinite_and_shapes() -> None:
    r = np.array([1.0, np.inf, np.nan, 2.0])
    same = output_metrics("t", r.copy(), r, 1e-5, 1e-4)
    assert same.passed and same.max_abs == 0.0 and same.nonfinite_mismatches == 0
    bad = output_metrics("t", np.array([1.0, np.inf, np.nan, np.inf]), r, 1e-5, 1e-4)
    assert not bad.passed and bad.nonfinite_mismatches == 1 and bad.tolerance_ratio == math.inf
    assert bad.max_abs == 0.0  # abs/rel errors cover the elements finite in both
    shape = output_metrics("t", np.zeros((2, 3)), np.zeros((3, 2)), 1e-5, 1e-4)
    assert not shape.passed and shape.reference_shape == (3, 2)
    assert shape.to_json()["max_abs"] is None and shape.to_json()["tolerance_ratio"] == "inf"


def test_cosine_and_top_k() -> None:
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == -1.0
    assert min_row_cosine(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.0
    a = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    r = np.array([[0.2, 0.6, 0.2], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]])
    assert top_k_agreement(a, r, 1) == pytest.approx(2 / 3)
    assert top_k_agreement(a, r, 2) == pytest.approx(2 / 3)  # row 0: {1, 2} vs {1, 0} (stable ties)
    assert top_k_agreement(a, r, 3) == 1.0
    assert top_k_agreement(a, r, 4) is None
    assert output_metrics("t", a, r, 1.0, 0.0, top_k=1).top_k_agreement == pytest.approx(2 / 3)


def test_default_tolerances() -> None:
    assert default_tolerances("fp32") == (1e-5, 1e-4)
    assert default_tolerances("fp16") == default_tolerances("bf16") == (1e-2, 1e-2)


# -- compare ---------------------------------------------------------------------------------

def test_fp32_matches_onnxruntime(mlp_path: Path) -> None:
    report = compare(mlp_path, shapes={"x": [4, 16]}, top_k=1, device="cpu")
    assert report.passed and report.first_divergence is None
    (y,) = report.outputs
    assert y.name == "y" and y.shape == (4, 8) and y.top_k_agreement == 1.0
    assert (report.atol, report.rtol) == (1e-5, 1e-4) and report.inputs == (("x", (4, 16), "float32"),)
    assert report.to_json()["passed"] is True


def test_fp16_against_fp32_fails_a_tight_tolerance(mlp_path: Path) -> None:
    report = compare(mlp_path, precision="fp16", against="fp32", shapes={"x": [4, 16]}, atol=1e-7, rtol=0.0,
                     device="cpu")
    assert not report.passed and report.precision == "fp16"
    assert report.outputs[0].max_abs > 1e-7
    loose = compare(mlp_path, precision="fp16", against="fp32", shapes={"x": [4, 16]}, device="cpu")
    assert loose.passed and (loose.atol, loose.rtol) == (1e-2, 1e-2)


def test_given_feeds_and_seed(mlp_path: Path) -> None:
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)}
    report = compare(mlp_path, feeds=feeds, device="cpu")
    assert report.passed and report.seed is None and report.inputs[0][1] == (2, 16)


def test_all_layers_finds_the_overflow(overflow_path: Path) -> None:
    report = compare(overflow_path, precision="fp16", against="fp32", all_layers=True, device="cpu")
    assert [m.name for m in report.outputs] == ["r", "a", "scaled", "s", "y"]
    assert [m.passed for m in report.outputs] == [True, True, False, False, False]
    assert report.first_divergence.name == "scaled"
    assert report.first_divergence.mismatches == 32
    assert 0 < report.first_divergence.nonfinite_mismatches < 32   # inf where x > 0 (a > 1)
    assert report.worst(1)[0].tolerance_ratio == math.inf


def test_all_layers_against_onnxruntime_passes(mlp_path: Path) -> None:
    report = compare(mlp_path, shapes={"x": [2, 16]}, all_layers=True, device="cpu")
    assert report.passed and [m.name for m in report.outputs] == ["m", "a", "r", "y"]


def test_with_all_outputs_keeps_names_and_types() -> None:
    model = with_all_outputs(mlp())
    assert [o.name for o in model.graph.output] == ["y", "m", "a", "r"]
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)
    assert [o.name for o in mlp().graph.output] == ["y"]  # the original is untouched


def test_bad_inputs_raise(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        compare(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="no such input"):
        compare(mlp_path, feeds={"nope": np.zeros((2, 16), np.float32)})
    with pytest.raises(InputError, match=r"has shape \[2, 15\]"):
        compare(mlp_path, feeds={"x": np.zeros((2, 15), np.float32)})
    with pytest.raises(InputError, match="reference"):
        compare(mlp_path, against="tensorrt")
    with pytest.raises(InputError, match="atol"):
        compare(mlp_path, atol=-1.0)


def test_all_layers_rebuilds_a_given_engine(overflow_path: Path, folder: Path) -> None:
    import kiln
    from kiln.config import BuildConfig

    path = folder / "overflow_fp16.kiln"
    kiln.build(overflow_path, BuildConfig(precision="fp16", device="cpu")).save(path)
    report = compare(overflow_path, engine=path, against="fp32", all_layers=True)
    assert report.precision == "fp16" and "rebuilt" in report.engine
    assert report.first_divergence.name == "scaled"
    plain = compare(overflow_path, engine=path, against="onnxruntime")
    assert [m.name for m in plain.outputs] == ["y"] and not plain.passed


def test_missing_onnxruntime_is_a_clear_error(mlp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.errors import KilnError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(KilnError, match="pip install onnxruntime"):
        compare(mlp_path, shapes={"x": [2, 16]}, device="cpu")


def test_all_layers_recalibrates_a_quantized_engine(mlp_path: Path, folder: Path) -> None:
    """An int8 engine rebuilt with every tensor as an output calibrates again: on the data given,
    else a clear error naming the engine and --calib-data."""
    import kiln
    from kiln.config import BuildConfig, Profile

    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((2, 16)).astype(np.float32)} for _ in range(2)]
    path = folder / "mlp_int8.kiln"
    profile = Profile.static({"x": [2, 16]})
    kiln.build(mlp_path, BuildConfig(precision="int8", device="cpu", profiles=(profile,)), calibration=data).save(path)
    with pytest.raises(InputError, match="is an int8 engine: --all-layers rebuilds it .* --calib-data PATH"):
        compare(mlp_path, engine=path, against="fp32", all_layers=True)
    report = compare(mlp_path, engine=path, against="fp32", all_layers=True, feeds=data[0], calibration=data,
                     atol=0.05, rtol=0.05)
    assert report.precision == "int8" and "rebuilt" in report.engine
    assert [m.name for m in report.outputs] == ["m", "a", "r", "y"] and report.passed
    assert report.outputs[0].cosine > 0.999                   # the int8 MatMul, compared in float

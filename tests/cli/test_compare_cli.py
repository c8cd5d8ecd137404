"""`kiln compare` through click's CliRunner, on the command object itself (exit codes 0/1/2)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_models  # noqa: E402

from kiln.cli.compare import compare  # noqa: E402

pytest.importorskip("onnxruntime")


def kiln_compare(*args: object) -> Result:
    result = CliRunner().invoke(compare, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def overflow() -> onnx.ModelProto:
    """x[4,8] -> Relu -> +1 -> *1e5 (inf in fp16) -> -1e5 -> *1e-5 -> y."""
    consts = {"one": 1.0, "big": 1e5, "small": 1e-5}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "one"], ["a"]),
             helper.make_node("Mul", ["a", "big"], ["scaled"]), helper.make_node("Sub", ["scaled", "big"], ["s"]),
             helper.make_node("Mul", ["s", "small"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    model = helper.make_model(helper.make_graph(nodes, "overflow", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare_cli")


@pytest.fixture(scope="module")
def mm_onnx(folder: Path) -> Path:
    return cli_models.save(cli_models.matmul_add(), folder, "matmul_add")


@pytest.fixture(scope="module")
def overflow_onnx(folder: Path) -> Path:
    return cli_models.save(overflow(), folder, "overflow")


def test_fp32_passes_against_onnxruntime(mm_onnx: Path) -> None:
    result = kiln_compare(mm_onnx, "--shapes", "a:4x16", "--device", "cpu", "--top-k", "1")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "top-1 1.0000" in result.stdout


def test_json_report(mm_onnx: Path) -> None:
    result = kiln_compare(mm_onnx, "--shapes", "a:2x16", "--device", "cpu", "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["seed"] == 7 and data["against"] == "onnxruntime"
    assert [o["name"] for o in data["outputs"]] == ["out"] and data["outputs"][0]["shape"] == [2, 8]


def test_fp16_with_tiny_atol_fails_with_exit_1(mm_onnx: Path) -> None:
    result = kiln_compare(mm_onnx, "--precision", "fp16", "--against", "fp32", "--shapes", "a:4x16",
                          "--device", "cpu", "--atol", "1e-7", "--rtol", "0")
    assert result.exit_code == 1, result.output
    assert "FAIL: 1 of 1 outputs" in result.stdout


def test_engine_file_and_npz_inputs(mm_onnx: Path, folder: Path) -> None:
    import kiln
    from kiln.config import BuildConfig, Profile

    engine_path = folder / "mm.kiln"
    kiln.build(mm_onnx, BuildConfig(device="cpu", profiles=(Profile.static({"a": [3, 16]}),))).save(engine_path)
    npz = folder / "in.npz"
    np.savez(npz, a=np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32))
    result = kiln_compare(mm_onnx, "--engine", engine_path, "--inputs", npz, "--against", "fp32")
    assert result.exit_code == 0, result.output
    assert "from file" in result.stdout


def test_all_layers_names_the_overflowing_tensor(overflow_onnx: Path) -> None:
    result = kiln_compare(overflow_onnx, "--fp16", "--against", "fp32", "--all-layers", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "first diverging tensor: scaled (tensor 3 of 5" in result.stdout
    data = json.loads(kiln_compare(overflow_onnx, "--fp16", "--against", "fp32", "--all-layers",
                                   "--device", "cpu", "--json").stdout)
    assert data["first_divergence"] == "scaled"


@pytest.mark.parametrize("make_args, message", [
    (lambda f, m: [f / "missing.onnx"], "does not exist"),
    (lambda f, m: [m, "--inputs", f / "missing.npz"], "does not exist"),
    (lambda f, m: [m, "--inputs", f / "wrong_name.npz"], "no such input"),
    (lambda f, m: [m, "--inputs", f / "wrong_shape.npz"], "has shape [2, 15]"),
    (lambda f, m: [m, "--engine", f / "missing.kiln"], "does not exist"),
])
def test_bad_input_exits_2(folder: Path, mm_onnx: Path, make_args, message: str) -> None:  # noqa: ANN001
    np.savez(folder / "wrong_name.npz", b=np.zeros((2, 16), np.float32))
    np.savez(folder / "wrong_shape.npz", a=np.zeros((2, 15), np.float32))
    result = kiln_compare(*make_args(folder, mm_onnx))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stdout == ""


def test_conflicting_options_exit_2(mm_onnx: Path, folder: Path) -> None:
    result = kiln_compare(mm_onnx, "--engine", folder / "x.kiln", "--fp16")
    assert result.exit_code == 2 and "--engine" in result.output
    result = kiln_compare(mm_onnx, "--inputs", folder / "x.npz", "--shapes", "a:1x16")
    assert result.exit_code == 2


def test_calib_data_goes_with_all_layers_and_an_engine(overflow_onnx: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", x=np.ones((4, 8), np.float32))
    result = kiln_compare(overflow_onnx, "--against", "fp32", "--calib-data", tmp_path / "calib.npz")
    assert result.exit_code == 2 and "--calib-data calibrates the int8/fp8 engine --all-layers rebuilds" in \
        " ".join(result.output.split())

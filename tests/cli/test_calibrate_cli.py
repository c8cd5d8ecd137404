"""`kiln calibrate` and `kiln build --int8`, invoked as click command objects (CliRunner, in process)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "precision"))
from test_int8 import SAMPLES, mlp, samples  # noqa: E402

from kiln.cli.build import build  # noqa: E402
from kiln.cli.calibrate import calibrate  # noqa: E402
from kiln.errors import BuildError  # noqa: E402


def invoke(command, *args: object) -> Result:  # noqa: ANN001
    return CliRunner().invoke(command, [str(a) for a in args])


def ok(command, *args: object) -> Result:  # noqa: ANN001
    result = invoke(command, *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def files(tmp_path: Path) -> tuple[Path, Path]:
    model, data = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(mlp(), model)
    np.savez(data, x=samples((4, 16)))
    return model, data


def test_build_int8_with_calib_data(tmp_path) -> None:  # noqa: ANN001
    model, data = files(tmp_path)
    out = tmp_path / "mlp.kiln"
    info = json.loads(ok(build, model, "-o", out, "--int8", "--calib-data", data, "--device", "cpu",
                         "--json").stdout)
    assert out.is_file() and info["precision"] == "int8"
    assert len(info["int8"]["quantized"]) == 2
    assert info["int8"]["calibration"] == {"method": "minmax", "source": "calibrated", "batches": 4, "cache": None}
    text = ok(build, model, "-o", out, "--precision", "int8", "--calib-data", data, "--calib-method", "minmax",
              "--device", "cpu").stdout
    assert "2 layer(s) quantized" in text and "minmax" in text


def test_calibrate_then_build_from_the_cache(tmp_path) -> None:  # noqa: ANN001
    model, data = files(tmp_path)
    cache = tmp_path / "mlp.calib.json"
    text = ok(calibrate, model, "--calib-data", data, "-o", cache, "--calib-method", "percentile").stdout
    assert "calibration cache written" in text and cache.is_file()
    doc = json.loads(cache.read_text())
    assert doc["method"] == "percentile" and "x" in doc["ranges"]
    info = json.loads(ok(calibrate, model, "--calib-data", data, "-o", cache, "--json").stdout)
    assert info["batches"] == SAMPLES // 4 and info["method"] == "minmax" and info["tensors"] == len(
        json.loads(cache.read_text())["ranges"])

    out = tmp_path / "mlp.kiln"
    info = json.loads(ok(build, model, "-o", out, "--int8", "--calib-cache", cache, "--device", "cpu",
                         "--json").stdout)
    assert info["int8"]["calibration"]["source"] == "cache"


def test_build_int8_without_data_fails(tmp_path) -> None:  # noqa: ANN001
    model, _ = files(tmp_path)
    result = invoke(build, model, "-o", tmp_path / "m.kiln", "--int8", "--device", "cpu")
    assert result.exit_code != 0 and isinstance(result.exception, BuildError)
    assert "--calib-data" in str(result.exception)
    assert not (tmp_path / "m.kiln").exists()
    result = invoke(build, model, "-o", tmp_path / "m.kiln", "--int8", "--fp8", "--device", "cpu")
    assert result.exit_code == 2 and "conflicting precisions" in result.output
    result = invoke(build, model, "-o", tmp_path / "m.kiln", "--fp16", "--bf16", "--int8", "--device", "cpu")
    assert result.exit_code == 2 and "conflicting precisions" in result.output


def test_build_int8_with_fp16_float_layers(tmp_path) -> None:  # noqa: ANN001
    model, data = files(tmp_path)
    out = tmp_path / "m.kiln"
    info = json.loads(ok(build, model, "-o", out, "--int8", "--fp16", "--calib-data", data, "--device", "cpu",
                         "--json").stdout)
    assert info["precision"] == "int8 (float layers fp16)" and info["int8"]["quantized"]

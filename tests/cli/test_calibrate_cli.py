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



def test_calibrate_for_gptq_then_build_from_the_cache(tmp_path) -> None:  # noqa: ANN001
    model, data = files(tmp_path)
    cache = tmp_path / "mlp.calib.json"
    text = " ".join(ok(calibrate, model, "--calib-data", data, "-o", cache, "--weight-rounding", "gptq").stdout.split())
    assert "Gram matrices of 2 matmul input(s) and 0 convolution(s)" in text
    assert (tmp_path / "mlp.calib.json.gram.npz").is_file()
    info = json.loads(ok(build, model, "-o", tmp_path / "mlp.kiln", "--fp8", "--calib-cache", cache,
                         "--weight-rounding", "gptq", "--device", "cpu", "--json").stdout)
    assert info["fp8"]["calibration"]["source"] == "cache" and info["fp8"]["gptq"]["rounded"] == 2

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


def test_build_of_an_explicitly_quantized_model_says_what_it_made(tmp_path) -> None:  # noqa: ANN001
    """A model quantized by ONNX Runtime (QDQ) builds without --int8: the summary names the quantized
    layers from its Q/DQ and what is left of them."""
    import pytest

    quant = pytest.importorskip("onnxruntime.quantization")
    from cli_models import conv_relu

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(3)])

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.it, None)

    src, qdq, out = tmp_path / "f.onnx", tmp_path / "q.onnx", tmp_path / "q.kiln"
    onnx.save(conv_relu(), src)
    quant.quantize_static(str(src), str(qdq), Reader(), quant_format=quant.QuantFormat.QDQ,
                          weight_type=quant.QuantType.QInt8, activation_type=quant.QuantType.QUInt8)
    info = json.loads(ok(build, qdq, "-o", out, "--shapes", "x:2x3x8x8", "--device", "cpu", "--json").stdout)
    assert info["explicit_quantization"] == {"layers": {"kiln::QConv": 1}, "weight_types": {"int8": 1},
                                             "residual_blocks": 0, "attention": 0, "residual_adds_in_norms": 0,
                                             "tables_in_gemms": 0, "dynamic": 0,
                                             "qdq_steps": 1, "qdq_pointwise": 1}   # the input Q, the output DQ
    text = ok(build, qdq, "-o", out, "--shapes", "x:2x3x8x8", "--device", "cpu").stdout
    assert "1 layer(s) from the model's Q/DQ (kiln::QConv 1; int8 weights 1)" in " ".join(text.split())
    plain = json.loads(ok(build, src, "-o", out, "--shapes", "x:2x3x8x8", "--device", "cpu", "--json").stdout)
    assert plain["explicit_quantization"] is None

"""The `kiln` command line end to end on tiny models, through click's CliRunner (in process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_models  # noqa: E402

from kiln.cli.main import main  # noqa: E402
from kiln.cli.shapes import parse_shapes  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
COMMANDS = ["build", "run", "bench", "inspect", "check", "rebuild", "ops", "compare", "calibrate"]


def kiln(*args: object) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def ok(*args: object) -> Result:
    result = kiln(*args)
    assert result.exit_code == 0, result.output
    return result


def ok_json(*args: object) -> dict:
    return json.loads(ok(*args, "--json").stdout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def conv_onnx(folder: Path) -> Path:
    return cli_models.save(cli_models.conv_relu(), folder, "conv_relu")


@pytest.fixture(scope="module")
def mm_onnx(folder: Path) -> Path:
    return cli_models.save(cli_models.matmul_add(), folder, "matmul_add")


@pytest.fixture(scope="module")
def conv_engine(folder: Path, conv_onnx: Path, device: str) -> Path:
    out = folder / "conv.kiln"
    ok("build", conv_onnx, "-o", out, "--shapes", "x:2x3x8x8", "--device", device)
    return out


@pytest.fixture(scope="module")
def mm_engine(folder: Path, mm_onnx: Path, device: str) -> Path:
    out = folder / "mm.kiln"
    ok("build", mm_onnx, "-o", out, "--device", device,
       "--min-shapes", "a:1x16", "--opt-shapes", "a:4x16", "--max-shapes", "a:8x16")
    return out


# -- entry point and help ------------------------------------------------------------------
def test_entry_point_runs_as_a_module() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "kiln.cli.main", "--help"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    text = ok(command, "--help").stdout
    assert "Usage:" in text and len(text.splitlines()) > 4
    assert "--json" in text


def test_version() -> None:
    assert "0." in ok("--version").stdout


# -- build -----------------------------------------------------------------------------------
def test_build_with_static_shapes(conv_engine: Path, conv_onnx: Path, folder: Path, device: str) -> None:
    info = ok_json("build", conv_onnx, "-o", folder / "conv_json.kiln", "--shapes", "x:2x3x8x8", "--device", device)
    assert info["source"] == "conv_relu.onnx" and info["source_nodes"] == 2
    assert 1 <= info["layers"] <= 2
    assert info["precision"] == "fp32" and info["device"]["kind"] == device
    assert info["profiles"] == [{"x": {"min": [2, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [2, 3, 8, 8]}}]
    assert info["engine_bytes"] == (folder / "conv_json.kiln").stat().st_size
    assert 0 < info["peak_activation_bytes"] <= info["total_activation_bytes"]
    assert conv_engine.is_file()


def test_build_prints_a_summary_and_progress(conv_onnx: Path, folder: Path) -> None:
    result = ok("build", conv_onnx, "-o", folder / "conv_text.kiln", "--shapes", "x:1x3x8x8")
    assert "engine built" in result.stdout
    assert "2 source nodes ->" in result.stdout and "peak activations" in result.stdout
    assert "building: importing" in result.stderr  # stage lines on stderr when not a terminal
    assert "building" not in result.stdout


def test_build_with_a_shape_range_trtexec_spelling(mm_engine: Path, mm_onnx: Path, folder: Path) -> None:
    info = ok_json("build", mm_onnx, "-o", folder / "mm_trt.kiln", "--device", "cpu",
                   "--minShapes", "a:1x16", "--optShapes", "a:2x16", "--maxShapes", "a:8x16")
    assert info["profiles"] == [{"a": {"min": [1, 16], "opt": [2, 16], "max": [8, 16]}}]
    assert mm_engine.is_file()


def test_build_fp16(mm_onnx: Path, folder: Path, device: str) -> None:
    out = folder / "mm16.kiln"
    info = ok_json("build", mm_onnx, "-o", out, "--fp16", "--shapes", "a:4x16", "--device", device)
    assert info["precision"] == "fp16"
    outputs = ok_json("run", out)["outputs"]
    assert outputs["out"]["dtype"] == "float32"  # bindings keep the model's types


@pytest.mark.parametrize("args, phrase", [
    (["--fp16", "--precision", "bf16"], "conflicting precisions"),
    (["--shapes", "a:4x16", "--min-shapes", "a:1x16"], "not both"),
    (["--min-shapes", "a:1x16", "--max-shapes", "a:8x16"], "--opt-shapes missing"),
    (["--min-shapes", "a:1x16", "--opt-shapes", "b:4x16", "--max-shapes", "a:8x16"], "must name the same inputs"),
    (["--shapes", "a=4x16"], "is not NAME:DIMS"),
    (["--shapes", "a:4xfoo"], "are not integers"),
])
def test_build_option_misuse_is_a_usage_error(mm_onnx: Path, folder: Path, args: list[str], phrase: str) -> None:
    out = folder / "misuse.kiln"
    result = kiln("build", mm_onnx, "-o", out, *args)
    assert result.exit_code == 2 and phrase in result.stderr
    assert not out.exists()


def test_dump_ir_writes_one_file_per_pass(conv_onnx: Path, folder: Path) -> None:
    dump = folder / "ir"
    info = ok_json("build", conv_onnx, "-o", folder / "conv_ir.kiln", "--shapes", "x:1x3x8x8", "--dump-ir", dump)
    files = sorted(p.name for p in dump.iterdir())
    passes = [name for name, _changed in info["passes"]]
    assert len(passes) > 0
    assert files[0].startswith("00_")  # the imported graph, before any pass
    assert [f.split("_", 1)[1].removesuffix(".txt") for f in files[1:]] == passes
    assert all((dump / f).read_text().strip() for f in files)


# -- run ---------------------------------------------------------------------------------------
def test_run_with_inputs_matches_onnxruntime(mm_engine: Path, mm_onnx: Path, folder: Path) -> None:
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    np.savez(folder / "in.npz", a=x)
    report = ok_json("run", mm_engine, "--inputs", folder / "in.npz", "--outputs", folder / "out.npz")
    assert report["inputs"]["a"] == {"shape": [3, 16], "dtype": "float32", "source": "file"}
    assert report["outputs"]["out"]["shape"] == [3, 8]
    got = np.load(folder / "out.npz")["out"]
    want = cli_models.ort_run(mm_onnx, {"a": x})["out"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert report["outputs"]["out"]["max"] == pytest.approx(float(want.max()), rel=1e-4)


def test_run_random_inputs_at_opt_and_given_shapes(conv_engine: Path, conv_onnx: Path, mm_engine: Path,
                                                   folder: Path) -> None:
    report = ok_json("run", conv_engine, "--outputs", folder / "rout.npz", "--save-inputs", folder / "rin.npz")
    assert report["inputs"]["x"]["source"] == "random" and report["inputs"]["x"]["shape"] == [2, 3, 8, 8]
    feeds = dict(np.load(folder / "rin.npz"))
    want = cli_models.ort_run(conv_onnx, feeds)["y"]
    np.testing.assert_allclose(np.load(folder / "rout.npz")["y"], want, rtol=1e-4, atol=1e-4)
    assert ok_json("run", mm_engine)["outputs"]["out"]["shape"] == [4, 8]  # opt
    assert ok_json("run", mm_engine, "--shapes", "a:8x16")["outputs"]["out"]["shape"] == [8, 8]


def test_run_prints_a_table(mm_engine: Path) -> None:
    text = ok("run", mm_engine).stdout
    assert "out" in text and "[4, 8]" in text and "float32" in text and "mean" in text


# -- bench -------------------------------------------------------------------------------------
def test_bench_json(mm_engine: Path) -> None:
    r = ok_json("bench", mm_engine, "--iterations", "5", "--warmup", "1")
    assert r["iterations"] == 5 and r["batch"] == 4 and r["shapes"] == {"a": [4, 16]}
    assert r["throughput"]["inferences_per_second"] > 0
    assert r["throughput"]["samples_per_second"] == pytest.approx(4 * r["throughput"]["inferences_per_second"])
    lat = r["latency_ms"]
    assert set(lat) == {"min", "mean", "median", "p90", "p95", "p99", "max"}
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    m, inspected = r["memory"], ok_json("inspect", mm_engine)["memory"]
    assert m["weights_bytes"] == inspected["weights_bytes"] > 0
    assert m["planned_activation_bytes"] == inspected["peak_activation_bytes"] <= m["total_activation_bytes"]
    if r["device"].startswith("cuda"):
        assert r["gpu_compute_ms"]["mean"] > 0 and r["h2d_ms"] and r["d2h_ms"]
        assert m["measured_peak_bytes"] > 0
        assert m["arena"]["planned_bytes"] == m["planned_activation_bytes"] <= m["arena"]["reserved_bytes"]
    else:
        assert r["gpu_compute_ms"] is None and m["measured_peak_bytes"] is None and m["arena"] is None


def test_bench_duration_and_text(mm_engine: Path) -> None:
    result = ok("bench", mm_engine, "--duration", "0.05", "--shapes", "a:8x16")
    assert "inferences/s" in result.stdout and "samples/s (batch 8)" in result.stdout and "p99" in result.stdout
    assert "weights" in result.stdout and "activations (plan, opt shapes)" in result.stdout


# -- inspect -----------------------------------------------------------------------------------
def test_inspect_json(mm_engine: Path) -> None:
    r = ok_json("inspect", mm_engine)
    assert r["format_version"] >= 1 and r["kiln_version"] and r["precision"] == "fp32"
    assert r["source"]["name"] == "matmul_add.onnx" and len(r["source"]["sha256"]) == 64
    assert r["inputs"] == [{"name": "a", "dtype": "float32", "shape": ["batch", 16]}]
    assert r["outputs"][0]["name"] == "out"
    assert r["profiles"] == [{"a": {"min": [1, 16], "opt": [4, 16], "max": [8, 16]}}]
    assert r["layers"] and all({"index", "name", "op", "tactic", "fused", "outputs"} <= set(layer)
                               for layer in r["layers"])
    assert sum(r["op_counts"].values()) == len(r["layers"])
    m = r["memory"]
    assert 0 < m["peak_activation_bytes"] <= m["total_activation_bytes"]
    assert m["weights_bytes"] >= (16 * 8 + 8) * 4 and m["embedded_source_bytes"] > 0


def test_inspect_text(conv_engine: Path) -> None:
    text = ok("inspect", conv_engine).stdout
    for phrase in ("bindings", "profiles", "layers", "op counts", "memory", "planned peak", "conv_relu.onnx"):
        assert phrase in text


# -- check ---------------------------------------------------------------------------------------
def test_check_supported_model(conv_onnx: Path) -> None:
    r = ok_json("check", conv_onnx)
    assert r["supported"] and r["node_count"] == 2 and r["unsupported"] == []
    assert {o["op"]: (o["count"], o["supported"]) for o in r["op_counts"]} == {"Conv": (1, True), "Relu": (1, True)}
    assert "✓" in ok("check", conv_onnx).stdout


def test_check_unsupported_model(folder: Path) -> None:
    path = cli_models.save(cli_models.unsupported(), folder, "frob")
    result = kiln("check", path, "--json")
    assert result.exit_code == 1
    r = json.loads(result.stdout)  # the report still comes, then the error
    assert not r["supported"]
    assert {o["op"]: o["supported"] for o in r["op_counts"]} == {"Relu": True, "com.example::Frobnicate": False}
    assert r["unsupported"][0]["node"] == "frob"
    assert result.stderr.startswith("error: the model contains 1 node(s) with operators kiln cannot run")
    text = kiln("check", path, "--nodes")
    assert text.exit_code == 1 and "✗" in text.stdout and "frob" in text.stdout


# -- rebuild ------------------------------------------------------------------------------------
def test_rebuild_overwrites_in_place_from_embedded_source(conv_engine: Path, folder: Path) -> None:
    copy = folder / "conv_copy.kiln"
    copy.write_bytes(conv_engine.read_bytes())
    before = ok_json("inspect", copy)
    info = ok_json("rebuild", copy)
    assert info["engine"] == str(copy) and info["source"] == "conv_relu.onnx"
    after = ok_json("inspect", copy)
    assert after["source"]["sha256"] == before["source"]["sha256"]
    assert after["source"]["name"] == "conv_relu.onnx" and after["profiles"] == before["profiles"]
    ok("run", copy)


def test_rebuild_to_another_path_with_onnx(mm_onnx: Path, folder: Path) -> None:
    bare = folder / "bare.kiln"
    ok("build", mm_onnx, "-o", bare, "--shapes", "a:2x16", "--no-embed-source")
    assert ok_json("inspect", bare)["memory"]["embedded_source_bytes"] == 0
    out = folder / "bare2.kiln"
    info = ok_json("rebuild", bare, "--onnx", mm_onnx, "-o", out, "--device", "cpu")
    assert info["device"]["kind"] == "cpu" and out.is_file()
    assert ok_json("run", out)["outputs"]["out"]["shape"] == [2, 8]



def test_rebuild_of_a_calibrated_engine_calibrates_again(mm_onnx: Path, folder: Path) -> None:
    """An engine keeps no activation ranges: rebuilding an int8 one asks for the data, then keeps
    the stored config (GPTQ weight rounding included) and gives the same engine."""
    data = folder / "mm_calib.npz"
    np.savez(data, a=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    built = folder / "mm_int8.kiln"
    first = ok_json("build", mm_onnx, "-o", built, "--shapes", "a:2x16", "--int8", "--calib-data", data,
                    "--weight-rounding", "gptq", "--device", "cpu")
    result = kiln("rebuild", built, "--device", "cpu")
    assert result.exit_code == 1 and "is an int8 engine" in result.output and "--calib-data PATH" in result.output
    again = ok_json("rebuild", built, "-o", folder / "mm_int8_again.kiln", "--calib-data", data, "--device", "cpu")
    assert again["int8"]["weight_rounding"] == "gptq" and again["int8"]["gptq"] == first["int8"]["gptq"]
    assert again["int8"]["quantized"] == first["int8"]["quantized"]


def test_quantize_attention_needs_an_8_bit_build(mm_onnx: Path, folder: Path) -> None:
    data = folder / "mm_calib_qa.npz"
    np.savez(data, a=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    out = folder / "mm_fp16_qa.kiln"
    result = kiln("build", mm_onnx, "-o", out, "--shapes", "a:2x16", "--fp16", "--quantize-attention",
                  "--device", "cpu")
    assert result.exit_code == 1 and "build with --int8 or --fp8, or drop --quantize-attention" in \
        " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()
    fp8 = ok("build", mm_onnx, "-o", folder / "mm_fp8_qa.kiln", "--shapes", "a:2x16", "--fp8", "--calib-data", data,
             "--quantize-attention", "--device", "cpu")
    assert "warning: --quantize-attention quantized the Q, K and V of 0 of 0 attention(s): the model has no " \
        "attention" in " ".join(fp8.output.split())

# -- ops -------------------------------------------------------------------------------------------
def test_ops_json() -> None:
    from kiln.kernels.reference import supported_ops

    r = ok_json("ops")
    assert r["count"] == len(r["ops"]) == len(supported_ops())
    by_op = {o["op"]: o for o in r["ops"]}
    assert {"Conv", "MatMul", "Relu"} <= set(by_op)
    assert all(isinstance(o["since"], int) and isinstance(o["doc"], str) for o in r["ops"])
    assert "Conv" in ok("ops").stdout


# -- shape parsing ---------------------------------------------------------------------------------
def test_parse_shapes() -> None:
    assert parse_shapes("x:8x3x224x224, mask:8X128") == {"x": [8, 3, 224, 224], "mask": [8, 128]}
    assert parse_shapes("input:0:1x3") == {"input:0": [1, 3]}  # TF-style names split at the last colon
    assert parse_shapes("'s':") == {"s": []}
    assert parse_shapes(None) == {} and parse_shapes("") == {}
    for bad in ("x", "x:1x-2", "x:1,x:2", ":1x2"):
        with pytest.raises(click.BadParameter):
            parse_shapes(bad)

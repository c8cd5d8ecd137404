"""Bad input of every kind gets a KilnError with a message naming the thing, the reason and the fix.

API calls raise the right exception type; the CLI prints "error: ..." on stderr, exits 1
(2 for option misuse, click's convention) and never shows a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
import cli_models  # noqa: E402
import engine_surgery  # noqa: E402

import kiln  # noqa: E402
from kiln.cli.main import main  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402
from kiln.engine.format import FORMAT_VERSION  # noqa: E402
from kiln.errors import (BuildError, DeviceMismatchError, EngineFormatError, InputError,  # noqa: E402
                         ModelLoadError, UnsupportedOpError)


def kiln_cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_cli_error(result: Result, *phrases: str, code: int = 1) -> str:
    """Exit `code`, "error: " first on stderr, every phrase there, no traceback anywhere."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    err = result.stderr
    if code == 1:
        # Stage lines of a build may come first (stderr is not a terminal here); the error ends it.
        assert err.startswith("error: ") or "\nerror: " in err, err
        err = err[err.find("error: "):]
        assert err.count("error: ") == 1 and "\n\n" not in err.strip()
    else:
        assert "Error" in err
    flat = " ".join(err.split())  # a long message may wrap
    for phrase in phrases:
        assert phrase in flat, f"{phrase!r} not in {err!r}"
    return err


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("errors")


@pytest.fixture(scope="module")
def mm_onnx(folder: Path) -> Path:
    return cli_models.save(cli_models.matmul_add(), folder, "matmul_add")


@pytest.fixture(scope="module")
def engine_path(folder: Path, mm_onnx: Path, device: str) -> Path:
    """An engine (for pytest's --device) for a[batch,16] with batch 1..8 (opt 4)."""
    config = BuildConfig(device=device, profiles=(Profile.from_ranges({"a": ([1, 16], [4, 16], [8, 16])}),))
    out = folder / "mm.kiln"
    kiln.build(mm_onnx, config).save(out)
    return out


@pytest.fixture(scope="module")
def fake_gpu_engine(folder: Path, engine_path: Path) -> Path:
    out = folder / "fake_gpu.kiln"
    engine_surgery.with_device(engine_path, out, engine_surgery.FAKE_GPU)
    return out


# -- ONNX files that are not models -------------------------------------------------------------
def _truncated(folder: Path) -> Path:
    data = cli_models.conv_relu().SerializeToString()
    path = folder / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(folder: Path) -> Path:
    path = folder / "notes.onnx"
    path.write_text("hello, this is not an ONNX model\n")
    return path


def _random(folder: Path) -> Path:
    path = folder / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    return path


NOT_A_MODEL = [_truncated, _text, _random]
NOT_READABLE = ("is not a readable ONNX model: protobuf decoding failed", "may be truncated or of another format",
                "re-export it")


@pytest.mark.parametrize("make", NOT_A_MODEL, ids=lambda f: f.__name__.strip("_"))
def test_onnx_file_that_is_not_a_model_api(folder: Path, make) -> None:
    path = make(folder)
    with pytest.raises(ModelLoadError) as info:
        kiln.build(path, BuildConfig(device="cpu"))
    for phrase in NOT_READABLE:
        assert phrase in str(info.value)
    assert path.name in str(info.value)


@pytest.mark.parametrize("make", NOT_A_MODEL, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("command", ["build", "check"])
def test_onnx_file_that_is_not_a_model_cli(folder: Path, make, command: str) -> None:
    path = make(folder)
    out = folder / f"{path.stem}.kiln"
    args = [command, path] + (["-o", out] if command == "build" else [])
    assert_cli_error(kiln_cli(*args), path.name, *NOT_READABLE)
    assert not out.exists()


def test_missing_onnx_file(folder: Path) -> None:
    assert_cli_error(kiln_cli("build", folder / "nope.onnx", "-o", folder / "nope.kiln"),
                     "nope.onnx' does not exist; check the path.")


# -- models kiln cannot build ---------------------------------------------------------------------
@pytest.mark.parametrize("make, op, reason", [
    (cli_models.unsupported, "com.example::Frobnicate", "custom domain 'com.example' is not supported"),
    (cli_models.image_decoder, "ImageDecoder", "no kiln implementation"),
])
def test_unsupported_op(folder: Path, make, op: str, reason: str) -> None:
    path = cli_models.save(make(), folder, f"unsupported_{op.split(':')[-1]}")
    with pytest.raises(UnsupportedOpError) as info:
        kiln.build(path, BuildConfig(device="cpu"))
    msg = str(info.value)
    assert f"the model contains 1 node(s) with operators kiln cannot run ({op})" in msg
    assert reason in msg and "`kiln ops` lists them" in msg
    out = folder / "unsupported.kiln"
    assert_cli_error(kiln_cli("build", path, "-o", out), op, reason)
    assert not out.exists()  # a failed build leaves no file behind
    assert_cli_error(kiln_cli("check", path), op, reason)


def test_failed_build_keeps_an_existing_engine_intact(folder: Path, engine_path: Path) -> None:
    out = folder / "keep.kiln"
    out.write_bytes(engine_path.read_bytes())
    path = cli_models.save(cli_models.unsupported(), folder, "frob")
    assert_cli_error(kiln_cli("build", path, "-o", out), "com.example::Frobnicate")
    assert out.read_bytes() == engine_path.read_bytes()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_dynamic_model_without_shapes(folder: Path, mm_onnx: Path) -> None:
    with pytest.raises(BuildError, match="has dynamic dims"):
        kiln.build(mm_onnx, BuildConfig(device="cpu"))
    out = folder / "noshapes.kiln"
    assert_cli_error(kiln_cli("build", mm_onnx, "-o", out), "input 'a' has dynamic dims ['batch', 16]",
                     "no shape profile covers it", "--shapes a:1x16")
    assert not out.exists()


def test_profile_naming_an_unknown_input(folder: Path, mm_onnx: Path) -> None:
    assert_cli_error(kiln_cli("build", mm_onnx, "-o", folder / "x.kiln", "--shapes", "b:4x16"),
                     "names input 'b', which the model does not have; its inputs are a")


# -- inputs that do not fit the engine --------------------------------------------------------------
BAD_INPUTS = [
    ("wrong_name", {"b": np.zeros((4, 16), np.float32)}, "the engine has no input named 'b'; its inputs are a"),
    ("wrong_dtype", {"a": np.zeros((4, 16), np.float64)},
     "input 'a' has dtype float64 but the engine expects float32; convert it first"),
    ("wrong_rank", {"a": np.zeros((4, 16, 1), np.float32)},
     "input 'a' has shape [4, 16, 1] (rank 3) but the engine expects rank 2"),
    ("fixed_dim", {"a": np.zeros((4, 15), np.float32)}, "input 'a' has shape [4, 15] but dim 1 must be 16"),
    ("outside_profile", {"a": np.zeros((9, 16), np.float32)},
     "input 'a' has shape [9, 16], outside the profile's min [1, 16] .. max [8, 16]"),
]


@pytest.mark.parametrize("name, feeds, phrase", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_api(engine_path: Path, name: str, feeds: dict, phrase: str) -> None:
    engine = kiln.load(engine_path)
    with pytest.raises(InputError) as info:
        engine(**feeds)
    assert phrase in str(info.value)
    with pytest.raises(InputError):  # the tensor path validates the same way
        engine.run_tensors({k: torch.from_numpy(v) for k, v in feeds.items()})


@pytest.mark.parametrize("name, feeds, phrase", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_cli(folder: Path, engine_path: Path, name: str, feeds: dict, phrase: str) -> None:
    npz = folder / f"{name}.npz"
    np.savez(npz, **feeds)
    assert_cli_error(kiln_cli("run", engine_path, "--inputs", npz), phrase)


def test_missing_input_api(engine_path: Path) -> None:
    with pytest.raises(InputError, match="input 'a' is missing; the engine needs a"):
        kiln.load(engine_path)()


def test_inputs_file_that_is_not_npz(folder: Path, engine_path: Path) -> None:
    bad = folder / "inputs.npz"
    bad.write_text("a = [1, 2, 3]\n")
    assert_cli_error(kiln_cli("run", engine_path, "--inputs", bad), "is not a readable .npz file",
                     "numpy.savez(path, input_name=array, ...)")
    assert_cli_error(kiln_cli("run", engine_path, "--inputs", folder / "absent.npz"),
                     "absent.npz' does not exist")


def test_random_shapes_outside_the_profile(engine_path: Path) -> None:
    assert_cli_error(kiln_cli("run", engine_path, "--shapes", "a:9x16"), "outside the profile's min [1, 16]")
    assert_cli_error(kiln_cli("bench", engine_path, "--shapes", "a:9x16", "--iterations", "1"),
                     "outside the profile's")
    assert_cli_error(kiln_cli("run", engine_path, "--shapes", "x:4x16"),
                     "--shapes names input 'x', which the engine does not have; its inputs are a")


# -- broken engine files --------------------------------------------------------------------------------
CHECKSUM = ("is corrupt or truncated: its checksum does not match its contents", "Rebuild it with `kiln build`")


@pytest.mark.parametrize("edit", [engine_surgery.flip_middle_byte, engine_surgery.truncate],
                         ids=["corrupt", "truncated"])
def test_damaged_engine(folder: Path, engine_path: Path, edit) -> None:
    bad = folder / f"{edit.__name__}.kiln"
    edit(engine_path, bad)
    with pytest.raises(EngineFormatError) as info:
        kiln.load(bad)
    assert all(p in str(info.value) for p in CHECKSUM)
    for command in ("run", "bench", "inspect", "rebuild"):
        assert_cli_error(kiln_cli(command, bad), bad.name, *CHECKSUM)


def test_file_that_is_not_an_engine(folder: Path, mm_onnx: Path) -> None:
    phrase = "is not a kiln engine (its first bytes are not the kiln magic)"
    with pytest.raises(EngineFormatError, match=r"not a kiln engine"):
        kiln.load(mm_onnx)
    for command in ("run", "inspect", "rebuild"):
        assert_cli_error(kiln_cli(command, mm_onnx), "matmul_add.onnx", phrase)
    assert_cli_error(kiln_cli("run", folder / "absent.kiln"), "absent.kiln' does not exist",
                     "build one with `kiln build MODEL.onnx -o")


def test_newer_engine_format(folder: Path, engine_path: Path) -> None:
    newer = folder / "newer.kiln"
    engine_surgery.with_format_version(engine_path, newer, FORMAT_VERSION + 1)
    phrase = f"has engine format version {FORMAT_VERSION + 1}, newer than the {FORMAT_VERSION} this kiln reads"
    with pytest.raises(EngineFormatError) as info:
        kiln.load(newer)
    assert phrase in str(info.value) and "upgrade kiln" in str(info.value)
    assert "checksum" not in str(info.value)
    assert_cli_error(kiln_cli("inspect", newer), phrase)


# -- an engine built for another GPU ---------------------------------------------------------------------
def test_engine_for_another_gpu_on_this_machine(fake_gpu_engine: Path) -> None:
    with pytest.raises(DeviceMismatchError) as info:
        kiln.load(fake_gpu_engine)
    msg = str(info.value)
    assert "'NVIDIA Fake GPU' (compute capability 1.0)" in msg and f"kiln rebuild {fake_gpu_engine}" in msg
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name() in msg
    else:
        assert "this machine has no CUDA GPU" in msg and "--device cpu" in msg
    assert_cli_error(kiln_cli("run", fake_gpu_engine), "NVIDIA Fake GPU", "kiln rebuild")
    assert_cli_error(kiln_cli("bench", fake_gpu_engine), "NVIDIA Fake GPU", "kiln rebuild")


def test_engine_for_another_gpu_with_a_gpu_present(fake_gpu_engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln.engine.device as device

    here = {**engine_surgery.FAKE_GPU, "name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device, "fingerprint", lambda kind: here)
    with pytest.raises(DeviceMismatchError) as info:
        kiln.load(fake_gpu_engine)
    msg = str(info.value)
    assert "was built for 'NVIDIA Fake GPU' (compute capability 1.0)" in msg
    assert "this GPU is 'NVIDIA H100 80GB HBM3' (compute capability 9.0)" in msg
    assert f"Rebuild it here with `kiln rebuild {fake_gpu_engine}`" in msg
    assert_cli_error(kiln_cli("run", fake_gpu_engine), "NVIDIA Fake GPU", "NVIDIA H100 80GB HBM3", "kiln rebuild")


def test_engine_for_another_gpu_is_inspectable_and_rebuildable(folder: Path, fake_gpu_engine: Path) -> None:
    result = kiln_cli("inspect", fake_gpu_engine, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["device"]["name"] == "NVIDIA Fake GPU" and report["layers"]
    out = folder / "rebuilt.kiln"
    result = kiln_cli("rebuild", fake_gpu_engine, "-o", out)
    assert result.exit_code == 0, result.output
    engine = kiln.load(out)  # built for this machine now
    assert engine(a=np.ones((2, 16), np.float32))["out"].shape == (2, 8)


# -- rebuild without its source ------------------------------------------------------------------------------
def test_rebuild_needs_the_right_onnx(folder: Path, mm_onnx: Path) -> None:
    bare = folder / "bare.kiln"
    config = BuildConfig(device="cpu", embed_source=False, profiles=(Profile.static({"a": [2, 16]}),))
    kiln.build(mm_onnx, config).save(bare)
    assert_cli_error(kiln_cli("rebuild", bare), "was built without its source model (--no-embed-source)",
                     "--onnx matmul_add.onnx")
    other = cli_models.save(cli_models.conv_relu(), folder, "other")
    assert_cli_error(kiln_cli("rebuild", bare, "--onnx", other),
                     "other.onnx' is not the model", "its SHA-256 is", "(from 'matmul_add.onnx')")

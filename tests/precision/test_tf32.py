"""tf32 engines: fp32 tensors, TF32 tensor-core math allowed on CUDA; the math context sets and
restores torch's flags (fp32 engines turn TF32 off)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kiln
from kiln.runtime.engine import fp32_math, math_mode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_models as pm  # noqa: E402


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def restore_flags():
    saved = _flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("start", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("precision, inside", [("tf32", (True, True)), ("fp32", (False, False))])
def test_math_mode_sets_and_restores_tf32_flags(restore_flags, start, precision, inside):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = start
    with math_mode(precision):
        assert _flags() == inside
    assert _flags() == start


@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_math_mode_leaves_flags_for_other_precisions(restore_flags, precision):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (True, False)
    with math_mode(precision):
        assert _flags() == (True, False)
    assert _flags() == (True, False)


def test_math_mode_restores_flags_after_an_error(restore_flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (False, False)
    with pytest.raises(RuntimeError), math_mode("tf32"):
        raise RuntimeError("boom")
    assert _flags() == (False, False)


def test_fp32_math_is_the_fp32_math_mode(restore_flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (True, True)
    with fp32_math(True):
        assert _flags() == (False, False)
    with fp32_math(False):
        assert _flags() == (True, True)


def test_tf32_engine_on_cpu_matches_fp32_exactly(tmp_path):
    model = pm.mlp()
    fp32 = kiln.build(model, kiln.BuildConfig(device="cpu"))
    tf32 = kiln.build(model, kiln.BuildConfig(device="cpu", precision="tf32"))
    assert tf32.header["build_config"]["precision"] == "tf32"
    assert tf32.header["build"]["precision"] == {"engine": "tf32", "strongly_typed": False, "layers": []}
    assert {s.dtype for s in tf32.plan.slots if s.dtype and s.dtype.startswith(("float", "bfloat"))} == {"float32"}
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_array_equal(tf32(x=x)["y"], fp32(x=x)["y"])
    tf32.save(tmp_path / "m.kiln")
    loaded = kiln.load(tmp_path / "m.kiln")
    assert loaded.header["build_config"]["precision"] == "tf32"
    np.testing.assert_array_equal(loaded(x=x)["y"], fp32(x=x)["y"])


def test_cli_builds_a_tf32_engine(tmp_path):
    from kiln.cli.main import main

    import onnx
    onnx.save(pm.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.kiln"
    result = CliRunner().invoke(main, ["build", str(tmp_path / "mlp.onnx"), "-o", str(out), "--precision", "tf32",
                                       "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert '"precision": "tf32"' in result.stdout
    assert kiln.load(out).header["build_config"]["precision"] == "tf32"


@pytest.mark.gpu
def test_tf32_engine_runs_under_tf32_math_on_cuda(restore_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    engine = kiln.build(pm.mlp(), kiln.BuildConfig(device="cuda", precision="tf32", tune=False))
    seen = []
    real = engine.executor.run

    def spy(*args, **kwargs):
        seen.append(_flags())
        return real(*args, **kwargs)

    engine.executor.run = spy
    engine.use_cuda_graphs = False
    engine(x=np.ones((4, 16), np.float32))
    assert seen == [(True, True)] and _flags() == (False, False)

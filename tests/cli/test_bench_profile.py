"""`kiln bench --profile-layers` and kiln.runtime.profiler on tiny models (CPU; CUDA with --device cuda)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli_models  # noqa: E402

import kiln  # noqa: E402
from kiln.cli.main import main  # noqa: E402
from kiln.runtime.profiler import by_time, profile_engine  # noqa: E402
from kiln.tactics import get_tactic  # noqa: E402


def chain() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv+Relu -> Softmax -> Transpose -> ReduceMean: a few steps that do not fuse."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["s"], name="softmax", axis=1),
             helper.make_node("Transpose", ["s"], ["t"], name="transpose", perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["t"], ["y"], name="mean", axes=[1], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", cli_models.OPSET)])
    model.ir_version = 8
    return model


def invoke(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.stdout


@pytest.fixture(scope="module")
def conv_engine(tmp_path_factory: pytest.TempPathFactory, device: str) -> Path:
    folder = tmp_path_factory.mktemp("profile")
    onnx_path = cli_models.save(chain(), folder, "chain")
    out = folder / "conv.kiln"
    invoke("build", onnx_path, "-o", out, "--shapes", "x:2x3x8x8", "--device", device)
    return out


def test_profile_has_one_row_per_step_with_positive_times(conv_engine: Path) -> None:
    r = json.loads(invoke("bench", conv_engine, "--iterations", "4", "--warmup", "1", "--profile-layers", "--json"))
    engine = kiln.load(conv_engine)
    steps = r["layers"]["steps"]
    assert len(steps) == len(engine.plan.steps) >= 3 and r["layers"]["iterations"] == 4
    assert sorted(s["index"] for s in steps) == list(range(len(engine.plan.steps)))
    for s in steps:
        plan_step = engine.plan.steps[s["index"]]
        assert (s["name"], s["op"], s["tactic"]) == (plan_step.name, plan_step.op, plan_step.tactic)
        assert s["ms"] > 0 and s["host_ms"] > 0
    assert [s["ms"] for s in steps] == sorted((s["ms"] for s in steps), reverse=True)
    assert sum(s["percent"] for s in steps) == pytest.approx(100.0)
    assert r["layers"]["total_ms"] == pytest.approx(sum(s["ms"] for s in steps))
    assert r["iterations"] == 4 and r["latency_ms"]["median"] > 0  # the normal report is still there


def test_profile_table_text(conv_engine: Path) -> None:
    text = invoke("bench", conv_engine, "--iterations", "3", "--profile-layers")
    engine = kiln.load(conv_engine)
    assert "per-layer times" in text and "inferences/s" in text and "total" in text
    for step in engine.plan.steps:
        assert step.tactic in text


def test_profile_engine_leaves_the_engine_runnable(conv_engine: Path) -> None:
    engine = kiln.load(conv_engine)
    x = torch.randn(2, 3, 8, 8)
    want = engine.run_tensors({"x": x})["y"].cpu()
    layers = profile_engine(engine, {"x": x}, iterations=2)
    assert [layer.index for layer in layers] == list(range(len(engine.plan.steps)))
    assert by_time(layers)[0].ms == max(layer.ms for layer in layers)
    torch.testing.assert_close(engine.run_tensors({"x": x})["y"].cpu(), want)
    assert engine.executor._kernels[0] is get_tactic(engine.plan.steps[0].tactic).kernel

"""ONNX Runtime's QOperator-format models (quantize_static with QuantFormat.QOperator): QLinearConv
and QLinearMatMul import as kiln::QConv / kiln::QMatMul, the com.microsoft QLinear ops as DQ -> op
-> Q chains; the engines equal ONNX Runtime's outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quant = pytest.importorskip("onnxruntime.quantization")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # benchmarks, tests.passes
from test_fuse_qdq import _feeds, _float_model, _output_step  # noqa: E402

import kiln  # noqa: E402
from kiln.config import BuildConfig  # noqa: E402
from kiln.onnx.importer import import_model  # noqa: E402
from kiln.onnx.qoperator import expand_contrib  # noqa: E402


def _qoperator(model, feeds, path: Path, activation_type: str) -> Path:
    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.it, None)

    src = path.with_suffix(".float.onnx")
    onnx.save(model, src)
    quant.quantize_static(str(src), str(path), Reader(), quant_format=quant.QuantFormat.QOperator, per_channel=True,
                          weight_type=quant.QuantType.QInt8, activation_type=getattr(quant.QuantType, activation_type))
    return path


def _residual_model():
    """conv -> relu -> conv + x -> relu -> GlobalAveragePool -> Flatten -> Gemm: a residual block."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in [("W1", (8, 8, 3, 3)), ("B1", (8,)), ("W2", (8, 8, 3, 3)), ("B2", (8,)), ("G", (5, 8)),
                          ("GB", (5,))]]
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "GB"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _images(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.abs(np.random.default_rng(seed).standard_normal((2, 8, 6, 6))).astype(np.float32)}


@pytest.mark.parametrize("activation_type", ["QUInt8", "QInt8"])
def test_qlinear_layers_become_kiln_layers_and_match(tmp_path, activation_type, device):
    path = _qoperator(_float_model(), [_feeds(s) for s in range(4)], tmp_path / "q.onnx", activation_type)
    model = onnx.load(path)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert ("", "QLinearConv") in ops and ("", "QLinearMatMul") in ops and ("com.microsoft", "QLinearAdd") in ops
    counts = import_model(model).op_counts()
    assert counts.get("kiln::QConv") == 1 and counts.get("kiln::QMatMul") == 1
    assert not any(op.startswith(("QLinear", "com.microsoft")) for op in counts)
    engine = kiln.build(model, BuildConfig(device=device))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    steps = {o: _output_step(model, o) for o in ("y", "z")}
    for seed in (10, 11):
        feeds = _feeds(seed)
        got = engine(**feeds)
        for name, want in zip(("y", "z"), session.run(["y", "z"], feeds)):
            if device == "cpu":   # the reference layers compute what the QLinear ops define: bit for bit
                assert np.array_equal(np.asarray(got[name]), want), name
            else:                 # float32 epilogues: an output may round one step away at a tie
                assert np.abs(np.asarray(got[name]) - want).max() <= steps[name] * 1.001, name


def test_qoperator_residual_network_runs_quantized(tmp_path, device):
    """QLinearAdd (the residual) and QLinearGlobalAveragePool (com.microsoft) expand into the DQ -> op
    -> Q chains fuse_qdq_residual and fuse_pointwise take; every layer is a Triton-able kiln layer and
    the outputs are within one output step of ONNX Runtime's."""
    path = _qoperator(_residual_model(), [_images(s) for s in range(4)], tmp_path / "r.onnx", "QUInt8")
    model = onnx.load(path)
    assert {"QLinearAdd", "QLinearGlobalAveragePool"} <= {n.op_type for n in model.graph.node
                                                          if n.domain == "com.microsoft"}
    engine = kiln.build(model, BuildConfig(device=device))
    steps = [s.op for s in engine.plan.steps]
    assert steps.count("kiln::QConv") == 2 and "kiln::QMatMul" in steps
    assert not any(s.startswith("QLinear") or s == "Add" for s in steps), steps
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    y_scale = float(inits[next(n for n in model.graph.node if n.output[0] == "y").input[1]])
    for seed in (10, 11):
        feeds = _images(seed)
        got = np.asarray(engine(**feeds)["y"])
        want = session.run(["y"], feeds)[0]
        assert np.abs(got - want).max() <= y_scale * 1.001


def test_models_without_contrib_ops_are_left_as_they_are():
    model = _float_model()
    assert expand_contrib(model) is model


@pytest.mark.parametrize("activation_type", ["QInt8", "QUInt8"])
def test_qoperator_transformer_builds_like_its_qdq_form(tmp_path, activation_type, device):
    """A BERT in QOperator format: QLinearSoftmax and the attention's QLinearMatMuls of two
    activations become DQ -> op -> Q (they stopped the build before), so that the attention is
    one kiln::QDQAttention as in the QDQ form, and the engine matches ONNX Runtime."""
    pytest.importorskip("transformers")
    import collections

    from benchmarks import models
    from benchmarks.qdq_ort import ort_qdq
    from kiln.config import Profile
    from tests.passes.test_ort_qdq_transformer import TINY, _export_tiny_bert

    bert, src = _export_tiny_bert(tmp_path)
    feeds = [{n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=s).items()} for s in range(4)]
    path = ort_qdq(src, feeds, activation_type, tmp_path, "QOperator")
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(str(path), BuildConfig(device=device, profiles=profile))
    ops = collections.Counter(s.op for s in engine.plan.steps)
    assert ops["kiln::QDQAttention"] == 2 and ops["kiln::QMatMul"] == 8 and "QLinearMatMul" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    want = session.run(None, test)[0]
    got = np.asarray(engine(**test)[bert.output_name]).reshape(-1, TINY["hidden_size"])
    want = want.reshape(-1, TINY["hidden_size"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999, cos

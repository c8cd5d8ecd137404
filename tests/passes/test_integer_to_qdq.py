"""integer_to_qdq: ONNX Runtime's dynamic quantization (DynamicQuantizeLinear ->
MatMulInteger -> Cast -> Mul(a_scale * w_scale)) becomes DQ(a) @ DQ(w) with the same values, and
then one kiln::QMatMul reading its scale and zero point at run time; other Casts and second
readers leave it alone; a quantize_dynamic BERT builds to merged QMatMuls and matches ONNX
Runtime, in a 16-bit engine too (whose Cast of the int32 sums to float16 overflowed to NaN), and
so does a CNN whose ConvInteger layers become float convs on the dequantized input. Codes only
int8 GEMMs read become int8 (signed_dynamic_codes); int32 sums left unfused keep fp32 math in an
fp16 engine (precision/safety.py)."""
from __future__ import annotations

import collections
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.verify import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.passes.fuse_qdq import fuse_qdq
from kiln.passes.integer_to_qdq import integer_to_qdq
from kiln.passes.signed_dynamic_codes import signed_dynamic_codes

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
RNG = np.random.default_rng(5)
W = RNG.integers(-127, 128, (16, 6), dtype=np.int8)
BIAS = RNG.standard_normal(6).astype(np.float32)


def _graph(w_scale: np.ndarray, *, cast_to: int = TensorProto.FLOAT, second_reader: bool = False,
           scale_order: int = 0) -> Graph:
    g = Graph("g", 17)
    x = Value("x", dtypes.FLOAT32, (3, 16))
    g.inputs.append(x)
    u8 = dtypes.BY_NAME["uint8"]
    a, a_s, a_zp = g.value("a", u8, (3, 16)), g.value("a_s", dtypes.FLOAT32, ()), g.value("a_zp", u8, ())
    g.add_node(Node("DynamicQuantizeLinear", [x], [a, a_s, a_zp], name="dql"))
    ws = g.constant(w_scale, "w_scale")
    s = g.value("s", dtypes.FLOAT32)
    g.add_node(Node("Mul", [a_s, ws] if scale_order == 0 else [ws, a_s], [s], name="scales"))
    acc = g.value("acc", dtypes.INT32, (3, 6))
    f, y, out = (g.value(n, dtypes.FLOAT32, (3, 6)) for n in ("f", "y", "out"))
    w_zp = g.constant(np.zeros(w_scale.shape, np.int8), "w_zp")
    g.add_node(Node("MatMulInteger", [a, g.constant(W, "w"), a_zp, w_zp], [acc], name="mmi"))
    g.add_node(Node("Cast", [acc], [f], {"to": cast_to}, name="cast"))
    g.add_node(Node("Mul", [f, s], [y], name="rescale"))
    g.add_node(Node("Add", [y, g.constant(BIAS, "bias")], [out], name="bias"))
    g.outputs.append(out)
    if second_reader:
        g.outputs.append(acc)
    return g


@pytest.mark.parametrize("w_scale", [np.array(0.02, np.float32), (RNG.random(6) * 0.05 + 0.01).astype(np.float32)])
@pytest.mark.parametrize("scale_order", [0, 1])
def test_rewrites_to_dequantized_matmul_then_one_qmatmul(w_scale, scale_order):
    # its own generator: the module's RNG hands out different x depending on which tests ran before
    x = torch.from_numpy(np.random.default_rng(11).standard_normal((3, 16)).astype(np.float32))
    want = run_graph(_graph(w_scale, scale_order=scale_order), {"x": x})["out"]
    g = _graph(w_scale, scale_order=scale_order)
    assert integer_to_qdq(g)
    verify(g)
    ops = collections.Counter(n.op for n in g.nodes)
    assert ops["MatMul"] == 1 and ops["DequantizeLinear"] == 2 and "MatMulInteger" not in ops and "Cast" not in ops
    dq_w = next(n for n in g.nodes if n.op == "DequantizeLinear" and n.input(0).name == "w")
    assert dq_w.attrs == ({"axis": 1} if w_scale.size > 1 else {})
    # the integer sum is exact; the float one of 16 dequantized products rounds each step (float32:
    # a few ulps of the sum of |terms|, ~1e-6 here), so compare at 1e-5
    torch.testing.assert_close(run_graph(g, {"x": x})["out"], want, rtol=1e-5, atol=1e-5)
    assert fuse_qdq(g)
    verify(g)
    q = next(n for n in g.nodes if n.op == "QMatMul")
    assert q.attrs["dynamic"] == 1 and q.input(2).name == "a_s" and q.input(3).name == "a_zp"
    assert q.input(6) is not None and not [n for n in g.nodes if n.op in ("Add", "MatMul")]   # the bias inside
    torch.testing.assert_close(run_graph(g, {"x": x})["out"], want, rtol=1e-6, atol=1e-6)


def test_codes_only_gemms_read_become_int8():
    x = torch.from_numpy(np.random.default_rng(12).standard_normal((3, 16)).astype(np.float32))
    g = _graph(np.array(0.02, np.float32))
    want = run_graph(g, {"x": x})["out"]
    assert integer_to_qdq(g) and fuse_qdq(g) and signed_dynamic_codes(g)
    verify(g)
    dq = next(n for n in g.nodes if n.op == "DynamicQuantize")
    q = next(n for n in g.nodes if n.op == "QMatMul")
    assert dq.domain == "kiln" and q.input(0) is dq.outputs[0] and q.input(3) is dq.outputs[2]
    assert q.input(0).dtype.name == q.input(3).dtype.name == "int8" and q.input(2) is dq.outputs[1]
    torch.testing.assert_close(run_graph(g, {"x": x})["out"], want, rtol=1e-6, atol=1e-6)
    g = _graph(np.array(0.02, np.float32))          # the codes also read elsewhere: left uint8
    g.outputs.append(next(n for n in g.nodes if n.op == "DynamicQuantizeLinear").outputs[0])
    assert integer_to_qdq(g) and fuse_qdq(g) and not signed_dynamic_codes(g)


@pytest.mark.parametrize("kwargs", [{"cast_to": TensorProto.INT64}, {"second_reader": True}])
def test_other_casts_and_shared_sums_stay(kwargs):
    g = _graph(np.array(0.02, np.float32), **kwargs)
    assert not integer_to_qdq(g)
    assert [n.op for n in g.nodes].count("MatMulInteger") == 1


def _dynamic_bert(tmp_path: Path, per_channel: bool):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("transformers")
    from benchmarks.qdq_ort import ort_dynamic
    from tests.passes.test_ort_qdq_transformer import _export_tiny_bert

    bert, src = _export_tiny_bert(tmp_path)
    return bert, ort_dynamic(src, tmp_path, per_channel)


@pytest.mark.parametrize("precision, per_channel", [("fp32", False), ("fp16", True)])
def test_quantize_dynamic_bert_builds_to_qmatmuls_and_matches(tmp_path, device, precision, per_channel):
    ort = pytest.importorskip("onnxruntime")
    import kiln
    from benchmarks import models
    from kiln.config import BuildConfig, Profile

    bert, path = _dynamic_bert(tmp_path, per_channel)
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(str(path), BuildConfig(device=device, precision=precision, profiles=profile))
    steps = engine.plan.steps
    ops = collections.Counter(s.op for s in steps)
    # per layer: Q/K/V as one, O, FFN1, FFN2; the attention's input and output, FFN1's and FFN2's
    # inputs quantized at run time
    # their int8 form (signed_dynamic_codes): the GEMMs read int8 codes
    assert ops["kiln::QMatMul"] == 8 and ops["kiln::DynamicQuantize"] == 8 and "MatMulInteger" not in ops
    gemms = [s for s in steps if s.op == "kiln::QMatMul"]
    assert all(s.attrs.get("dynamic") == 1 and engine.plan.slots[s.inputs[0]].dtype == "int8" for s in gemms)
    from kiln.cli.build_summary import explicit_line, explicit_quantization
    summary = explicit_quantization(engine)
    assert summary["dynamic"] == 8 and "8 with input scales computed at run time" in explicit_line(summary)
    if device == "cuda":
        assert not [s.name for s in steps if s.op in ("kiln::QMatMul", "kiln::DynamicQuantize")
                    and s.tactic.endswith(".reference")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    want = session.run(None, feeds)[0]
    got = np.asarray(engine(**feeds)[bert.output_name], dtype=np.float32)
    assert np.isfinite(got).all()
    if precision == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    else:    # float16 activations: a code of the run-time quantization may move a step
        from tests.passes.test_ort_qdq_transformer import TINY
        got, want = (t.reshape(-1, TINY["hidden_size"]) for t in (got, want))
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.999, cos



class _Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_quantize_dynamic_convs_build_and_match(tmp_path, device, precision):
    ort = pytest.importorskip("onnxruntime")
    quant = pytest.importorskip("onnxruntime.quantization")
    import kiln
    from kiln.config import BuildConfig

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12) * 4
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Cnn().eval(), (x,), str(tmp_path / "cnn.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    path = tmp_path / "cnn_dynamic.onnx"
    quant.quantize_dynamic(str(tmp_path / "cnn.onnx"), str(path), weight_type=quant.QuantType.QInt8,
                           op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    engine = kiln.build(str(path), BuildConfig(device=device, precision=precision))
    ops = collections.Counter(s.op for s in engine.plan.steps)
    assert "ConvInteger" not in ops and "MatMulInteger" not in ops and ops["kiln::FusedConv"] == 2
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    got = np.asarray(engine(x=x.numpy())["y"], dtype=np.float32)
    tol = 1e-5 if precision == "fp32" else 1e-2
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_integer_sums_left_unfused_keep_fp32_in_a_16_bit_engine(tmp_path):
    """A MatMulInteger whose int32 sums are also a graph output stays as it is (integer_to_qdq
    leaves it); in an fp16 engine its Cast to float and the Mul reading it keep fp32 math
    (precision/safety.py), where fp16 overflowed at 65504: inf, NaN."""
    import onnx
    from onnx import helper, numpy_helper

    import kiln
    from kiln.config import BuildConfig

    w = np.full((64, 4), 127, np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["a", "a_s", "a_zp"]),
             helper.make_node("MatMulInteger", ["a", "w", "a_zp"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["a_s", "w_s"], ["s"]),
             helper.make_node("Mul", ["f", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("acc", TensorProto.INT32, [2, 4])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.array(0.01, np.float32), "w_s")])
    path = tmp_path / "sums.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.linspace(0.0, 10.0, 128, dtype=np.float32).reshape(2, 64)
    engine = kiln.build(str(path), BuildConfig(device="cpu", precision="fp16"))
    out = engine(x=x)
    acc = np.asarray(out["acc"])
    assert acc.max() > 65504      # the sums themselves: past fp16's range
    want = acc.astype(np.float32) * np.float32(float(10.0 / 255) * 0.01)
    np.testing.assert_allclose(np.asarray(out["y"], dtype=np.float32), want, rtol=2e-3)
    kept = engine.header["build"]["precision"]["layers"]
    assert len(kept) == 1 and kept[0]["precision"] == "fp32" and "Cast" in kept[0]["fused_from"] \
        and "int32 sums" in kept[0]["reason"]

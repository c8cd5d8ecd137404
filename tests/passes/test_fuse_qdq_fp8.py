"""FP8 explicit quantization (float8_e4m3fn Q/DQ, as ModelOpt exports FP8 models for TensorRT):
fuse_qdq makes kiln::QMatMul / kiln::QConv over float8 codes, the weights recovered from their
folded float constants (quantized_weights.recover_fp8), float8 zero points dropped; the engine
matches ONNX Runtime's unoptimised run. What it must not take: a non-zero float8 zero point, int8 activations
with float8 weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.passes.quantized_weights import recover_fp8

RNG = np.random.default_rng(0)


def _fp8_weight(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """A float weight that is exactly DQ(q, s) with float8 codes q and s = amax / 448 per channel."""
    w = RNG.standard_normal(shape).astype(np.float32)
    amax = np.abs(np.moveaxis(w, axis, 0).reshape(shape[axis], -1)).max(1)
    s = (amax / 448).astype(np.float32)
    bshape = [1] * len(shape)
    bshape[axis] = -1
    q = torch.from_numpy(w / s.reshape(bshape)).clamp(-448, 448).to(torch.float8_e4m3fn).float().numpy()
    return (q.astype(np.float64) * s.reshape(bshape)).astype(np.float32)


def test_recover_fp8_is_exact_or_refuses():
    w = _fp8_weight((6, 4, 3, 3), 0)
    q, s = recover_fp8(w, 0)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (6,)
    assert np.array_equal((q.float().numpy().astype(np.float64) * s.astype(np.float64)[:, None, None, None])
                          .astype(np.float32), w)
    assert recover_fp8(RNG.standard_normal((6, 4)).astype(np.float32), 1) is None   # not on the grid


def _model(zero_point: float = 0.0, activation_type: int | None = None):
    """x -> Q/DQ (fp8) -> MatMul(DQ'd fp8 weight) + bias -> Relu -> Q/DQ (fp8) -> Gemm(transB) -> y;
    img -> Q/DQ (fp8) -> Conv(fp8 weight) + bias -> z."""
    from onnx import TensorProto, helper, numpy_helper

    act = activation_type or TensorProto.FLOAT8E4M3FN
    zp = [zero_point] if act == TensorProto.FLOAT8E4M3FN else [0]
    inits = [numpy_helper.from_array(_fp8_weight((16, 8), 1), "W1"),
             numpy_helper.from_array(_fp8_weight((6, 8), 0), "W2"),
             numpy_helper.from_array(_fp8_weight((4, 8, 3, 3), 0), "CW"),
             numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "B1"),
             numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "CB"),
             numpy_helper.from_array(np.float32(0.01), "s1"), numpy_helper.from_array(np.float32(0.02), "s2"),
             helper.make_tensor("z", act, [], zp)]
    q = lambda i, s, o: [helper.make_node("QuantizeLinear", [i, s, "z"], [o + "_q"]),  # noqa: E731
                         helper.make_node("DequantizeLinear", [o + "_q", s, "z"], [o])]
    nodes = [*q("x", "s1", "xd"), helper.make_node("MatMul", ["xd", "W1"], ["m"]),
             helper.make_node("Add", ["m", "B1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             *q("r", "s2", "rd"), helper.make_node("Gemm", ["rd", "W2"], ["y"], transB=1),
             *q("img", "s1", "id"), helper.make_node("Conv", ["id", "CW", "CB"], ["zc"], pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
              helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 8, 5, 5])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6]),
               helper.make_tensor_value_info("zc", TensorProto.FLOAT, [2, 4, 5, 5])]
    model = helper.make_model(helper.make_graph(nodes, "fp8", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((4, 16)).astype(np.float32),
            "img": rng.standard_normal((2, 8, 5, 5)).astype(np.float32)}


def _optimized(model):
    from kiln.onnx.importer import import_model
    from kiln.passes.pipeline import optimize

    graph = import_model(model)
    optimize(graph)
    return graph


def test_fp8_qdq_model_builds_float8_layers_and_matches_onnxruntime(device):
    ort = pytest.importorskip("onnxruntime")
    import kiln
    from kiln.config import BuildConfig

    model = _model()
    graph = _optimized(model)
    layers = [n for n in graph.nodes if n.op in ("QMatMul", "QConv")]
    assert sorted(n.op for n in layers) == ["QConv", "QMatMul", "QMatMul"]
    for n in layers:
        assert n.input(0).dtype.name == "float8_e4m3fn" and n.input(1).dtype.name == "float8_e4m3fn"
        assert n.input(3) is None and n.input(5) is None       # float8: no zero points
    first = next(n for n in layers if n.op == "QMatMul" and n.attrs["activation"] == "Relu")
    assert first.attrs["out_dtype"] == 17 and first.input(9) is None   # requantized to float8 for the Gemm

    engine = kiln.build(model, BuildConfig(device=device))
    # ONNX Runtime's graph optimisations rewrite float8 Q/DQ chains on the CPU (its results move by
    # several float8 steps); unoptimised, it runs the ONNX semantics the engine must match.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for seed in (3, 4):
        feeds = _feeds(seed)
        got = engine(**feeds)
        for name, want in zip(("y", "zc"), session.run(["y", "zc"], feeds)):
            g, w = np.asarray(got[name], np.float64).reshape(-1), want.reshape(-1).astype(np.float64)
            if device == "cpu":   # the reference sums the float8 products exactly, as the ONNX semantics do
                assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), name
            else:                 # float32 accumulation on the tensor cores: an intermediate may round one step away
                assert g @ w / np.linalg.norm(g) / np.linalg.norm(w) > 0.999, name


@pytest.mark.parametrize("case", ["nonzero-zero-point", "int8-activations"])
def test_what_fp8_fusion_leaves_alone(case):
    from onnx import TensorProto

    model = _model(zero_point=1.0) if case == "nonzero-zero-point" else _model(activation_type=TensorProto.INT8)
    counts = _optimized(model).op_counts()
    assert "kiln::QMatMul" not in counts and "kiln::QConv" not in counts


def test_batchnorm_folds_into_a_float8_weights_scales():
    """A float8 QAT conv followed by BatchNorm (negative gamma included): the folded weight is still
    an exact float8 dequantization, the codes the same up to sign."""
    from graphs import Builder, check_pass
    from kiln.passes.fold_batchnorm import fold_batchnorm

    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    sx = b.const(0.01)
    xq = b.op("DequantizeLinear", b.op("QuantizeLinear", x, sx, output_dtype=17), sx)
    w = _fp8_weight((4, 3, 3, 3), 0)
    stats = [np.array([0.7, -1.3, 2.1, 0.05], np.float32), RNG.standard_normal(4).astype(np.float32),
             RNG.standard_normal(4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32)]
    graph = b.output(b.op("BatchNormalization", b.op("Conv", xq, b.const(w), pads=[1, 1, 1, 1]),
                          *(b.const(s) for s in stats)))
    assert check_pass(fold_batchnorm, b, rtol=1e-5, atol=1e-5)
    folded = np.asarray(next(n for n in graph.nodes if n.op == "Conv").input(1).const)
    q, _ = recover_fp8(folded, 0)
    want, _ = recover_fp8(w, 0)
    sign = np.array([1, -1, 1, 1], np.float32)[:, None, None, None]
    assert np.array_equal(q.float().numpy(), want.float().numpy() * sign)


def test_modelopt_style_fp8_bert_builds_as_kiln_fp8_does(tmp_path, device):
    """A tiny BERT with ModelOpt-style float8 Q/DQ (benchmarks/fp8_qdq_export.py): every projection a
    float8 kiln::QMatMul, Q/K/V merged into one and a Split, the norms writing the next layer's
    float8 input, no QuantizeLinear or float MatMul left; it matches ONNX Runtime's unoptimised run."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    import kiln
    from kiln.config import BuildConfig, Profile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks import models
    from benchmarks.fp8_qdq_export import fp8_qdq

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 2000, "max_position_embeddings": 64}
    bert = models.bert(0, name="tiny_bert", seq=16, **tiny)
    feeds = [{n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=s).items()} for s in range(3)]
    path = fp8_qdq(models.export_onnx(bert, tmp_path), feeds, tmp_path / "fp8.onnx")
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(str(path), BuildConfig(device=device, profiles=profile))
    steps = [s.op for s in engine.plan.steps]
    assert steps.count("kiln::QMatMul") == 8 and steps.count("Split") == 2
    assert "QuantizeLinear" not in steps and "MatMul" not in steps and "kiln::FusedMatMul" not in steps
    assert steps.count("kiln::NormQuantize") == 4
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    got = np.asarray(engine(**feed)[bert.output_name]).reshape(-1, tiny["hidden_size"])
    want = session.run(None, feed)[0].reshape(-1, tiny["hidden_size"])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.9999, cos

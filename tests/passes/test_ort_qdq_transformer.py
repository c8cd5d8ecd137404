"""A transformer quantized by ONNX Runtime (quantize_static, QDQ format, every op quantized): each
MatMul's product rounded to its own codes before the bias (fuse_qdq_bias), the Q/K/V projections
merged into one kiln::QMatMul with per-column mid scales, the Gelu chain of Q/DQ pairs a table
of codes in the FFN expansion's epilogue; the engine computes what ONNX Runtime does. On a GPU (`--device cuda`) no
element-wise layer is left on the reference: their kernels give the reference's codes."""
from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 2000, "max_position_embeddings": 64}


def _export_tiny_bert(tmp_path: Path):
    """(the tiny BenchModel, the path of its float ONNX export)."""
    from benchmarks import models

    bert = models.bert(0, name="tiny_bert", seq=16, **TINY)
    names = bert.input_names
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bert.export_module, tuple(models.make_inputs(bert, 2)[n] for n in names), buf,
                          dynamo=False, opset_version=17, input_names=list(names), output_names=[bert.output_name])
    src = tmp_path / "bert.onnx"
    src.write_bytes(buf.getvalue())
    return bert, src


def _ort_qdq_bert(tmp_path: Path):
    """(the BenchModel, the path of its ONNX Runtime QDQ model: QInt8 activations, per-channel weights,
    quantized as benchmarks/qdq_ort.py does)."""
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("transformers")
    from benchmarks import models
    from benchmarks.qdq_ort import ort_qdq

    bert, src = _export_tiny_bert(tmp_path)
    feeds = [{n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=s).items()} for s in range(4)]
    return bert, ort_qdq(src, feeds, "QInt8", tmp_path)


def test_onnxruntime_qdq_bert_builds_to_merged_layers_and_matches(tmp_path, device):
    ort = pytest.importorskip("onnxruntime")
    import kiln
    from benchmarks import models
    from kiln.config import BuildConfig, Profile
    from kiln.kernels.reference.quantized import QMATMUL_INPUTS

    bert, path = _ort_qdq_bert(tmp_path)
    profile = (Profile.from_ranges(models.profile_ranges(bert, [2])),)
    engine = kiln.build(str(path), BuildConfig(device=device, profiles=profile))
    steps = engine.plan.steps
    ops = [s.op for s in steps]
    assert ops.count("kiln::QMatMul") == 8 and ops.count("Split") == 2     # per layer: Q/K/V as one, O, FFN1, FFN2
    merged = [s for s in steps if s.op == "kiln::QMatMul" and engine.plan.slots[s.inputs[1]].shape[-1] == 96]
    mid = QMATMUL_INPUTS.index("mid_scale")
    assert len(merged) == 2 and all(s.inputs[mid] is not None for s in merged)   # each member's mid scales
    # the Gelu chain of Q/DQ pairs: a table of 256 codes in FFN1's epilogue (precision/fuse_code_table.py)
    assert not [s for s in steps if s.op == "kiln::Pointwise" and "Erf" in {i[0] for i in s.attrs["program"]}]
    table = QMATMUL_INPUTS.index("table")
    gelu = [s for s in steps if s.op == "kiln::QMatMul" and len(s.inputs) > table and s.inputs[table] is not None]
    assert len(gelu) == 2 and all(engine.plan.slots[s.inputs[table]].shape == (256,) for s in gelu)
    # each layer's attention, Q/DQ on its scores and probabilities included, is one layer
    assert ops.count("kiln::QDQAttention") == 2 and "Softmax" not in ops and "MatMul" not in ops
    # the residual adds (DQ + DQ -> Q -> DQ) are read by the norms that quantize their outputs: all
    # but the last, whose norm's output is the model's (a LayerNorm, its Q/DQ pair a Pointwise after it)
    folded = [s for s in steps if s.op == "kiln::NormQuantize" and s.attrs.get("x_program")]
    adds = [s for s in steps if s.op == "kiln::Pointwise"
            and [i[0] for i in s.attrs["program"]][:3] == ["DequantizeLinear"] * 2 + ["Add"]]
    assert len(folded) == 3 and len(adds) == 1 and ops[steps.index(adds[0]) + 1] == "LayerNormalization"
    from kiln.cli.build_summary import explicit_line, explicit_quantization
    summary = explicit_quantization(engine)
    assert summary["attention"] == 2 and "2 attention(s) with Q/DQ inside as one layer" in explicit_line(summary)
    assert summary["residual_adds_in_norms"] == 3 and "3 quantized residual add(s) in their norm" in \
        explicit_line(summary)
    assert summary["tables_in_gemms"] == 2 and "2 element-wise program(s) as a code table in their GEMM" in \
        explicit_line(summary)
    if device == "cuda":     # the kernels' codes are the reference's: nothing element-wise left on it
        assert not [s.name for s in steps if s.op in ("kiln::Pointwise", "kiln::QDQAttention", "kiln::NormQuantize")
                    and s.tactic.endswith(".reference")]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the ONNX semantics
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {n: v.numpy() for n, v in models.make_inputs(bert, 2, seed=9).items()}
    want = session.run(None, feeds)[0]
    got = np.asarray(engine(**feeds)[bert.output_name])
    if device == "cpu":
        np.testing.assert_array_equal(got, want)
    else:   # cuBLAS sums the float attention in another order: codes near a boundary may move a step
        got, want = (t.reshape(-1, TINY["hidden_size"]) for t in (got, want))
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.999, cos

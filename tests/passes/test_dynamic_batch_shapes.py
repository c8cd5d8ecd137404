"""Dynamic dims reach every layer as the symbols the profile binds (refine_shapes): a
Hugging Face BERT exported with a dynamic batch (torch.onnx, dynamic_axes) has its Reshape
targets, its mask's Range/Expand and the attention's output Reshape computed from Shape ops, and
ONNX inference names their dims afresh (unk__N); the tactics that need those dims (the one-tile
attention, fp8 GEMMs with a known K) were then not offered for a batch 1-32 engine. With a
dynamic sequence too, the position ids cut to it keep the symbol where the profile bounds it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "vocab_size": 2000, "max_position_embeddings": 32}


def test_dynamic_batch_bert_keeps_the_batch_symbol_and_static_heads(tmp_path: Path) -> None:
    from benchmarks import models
    from kiln.compiler.builder import build, optimized_graph
    from kiln.config import BuildConfig, Profile

    bert = models.bert(0, name="tiny_bert", seq=16, **TINY)
    path = models.export_onnx(bert, tmp_path)
    config = BuildConfig(precision="fp32", device="cpu", tune=False,
                         profiles=(Profile.from_ranges(models.profile_ranges(bert, [1, 4])),))
    graph = optimized_graph(str(path), config, lambda _msg: None).graph

    def known(shape) -> bool:  # noqa: ANN001
        return shape is not None and all(isinstance(d, int) or d == "batch" for d in shape)

    attentions = [n for n in graph.nodes if n.qualified_op == "kiln::Attention"]
    assert len(attentions) == 2
    for node in attentions:
        assert all(known(v.shape) for v in node.inputs if v is not None), [v.shape for v in node.inputs]
        assert node.inputs[0].shape == ("batch", 4, 16, 8) and known(node.outputs[0].shape)
    matmuls = [n for n in graph.nodes if n.qualified_op == "kiln::FusedMatMul"]
    assert matmuls and all(known(n.inputs[0].shape) and n.inputs[0].shape[-1] in (32, 64) for n in matmuls)
    # and the engine still computes the model, at a batch the export did not see
    engine = build(str(path), config)
    feeds = models.make_inputs(bert, 3, seed=1)
    got = engine.run_tensors(feeds)[bert.output_name]
    with torch.no_grad():
        want = bert.module(*[feeds[n] for n in bert.input_names])
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_dynamic_sequence_bert_keeps_its_symbols_and_bounds(tmp_path: Path) -> None:
    """Batch and sequence both dynamic: the position ids cut to the sequence (bounded by the
    profile within the 32-row table) keep 'seq', so every layer reads ('batch', 'seq', ...) dims;
    the graph carries the profile's bounds; the engine matches PyTorch at a sequence below the
    export's."""
    import io
    import warnings

    import onnx

    from benchmarks import models
    from kiln.compiler.builder import build, optimized_graph
    from kiln.config import BuildConfig, Profile

    bert = models.bert(0, name="tiny_bert", seq=16, **TINY)
    names = bert.input_names
    axes = {n: {0: "batch", 1: "seq"} for n in (*names, bert.output_name)}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bert.export_module, tuple(models.make_inputs(bert, 2)[n] for n in names), buf, dynamo=False,
                          opset_version=17, input_names=list(names), output_names=[bert.output_name],
                          dynamic_axes=axes)
    model = onnx.load_from_string(buf.getvalue())
    config = BuildConfig(precision="fp32", device="cpu", tune=False,
                         profiles=(Profile.from_ranges({n: ((1, 4), (2, 16), (4, 32)) for n in names}),))
    graph = optimized_graph(model, config, lambda _msg: None).graph
    assert graph.dim_bounds == {"batch": (1, 4), "seq": (4, 32)}
    stray = {d for n in graph.nodes if n.qualified_op in ("kiln::Attention", "kiln::FusedMatMul")
             for v in (*n.inputs, *n.outputs) if v is not None and v.shape for d in v.shape
             if isinstance(d, str) and d not in ("batch", "seq")}
    assert not stray
    attention = next(n for n in graph.nodes if n.qualified_op == "kiln::Attention")
    assert attention.inputs[1].shape == ("batch", 4, "seq", 8)
    engine = build(model, config)
    feeds = {k: v[:, :9] for k, v in models.make_inputs(bert, 3, seed=2).items()}
    got = engine.run_tensors(feeds)[bert.output_name]
    with torch.no_grad():
        want = bert.module(*[feeds[n] for n in names])
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)

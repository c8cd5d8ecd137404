"""The test models themselves: each ONNX export matches its PyTorch source.

No kiln compiler here: if these fail, test_models.py failures say nothing about kiln.
"""
from __future__ import annotations

import collections
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kiln.models import EMBEDDING_DIM, INPUT_NAMES, SAMPLE_SENTENCES, default_model_path, reference_embeddings, tokenize

# builders.py sits beside this file; importable under any --import-mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from builders import BUILDERS, ExportedModel  # noqa: E402


def _op_counts(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def exported(model_dir: Path) -> dict[str, ExportedModel]:
    return {name: build(model_dir) for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_export_matches_torch(exported: dict[str, ExportedModel], name: str) -> None:
    model = exported[name]
    proto = onnx.load(str(model.path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    for value in (*proto.graph.input, *proto.graph.output):
        assert _dims(value)[0] == "batch", f"{value.name} should have a dynamic batch dim"
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        feeds = model.random_inputs(batch, seed=batch)
        want = model.torch_outputs(feeds)
        got = dict(zip(model.output_names, session.run(list(model.output_names), feeds)))
        for out_name in model.output_names:
            np.testing.assert_allclose(got[out_name], want[out_name], rtol=1e-4, atol=1e-4)


def test_exports_keep_the_ops_the_passes_target(exported: dict[str, ExportedModel]) -> None:
    cnn = _op_counts(exported["small_cnn"].path)
    # BatchNormalization must survive export, or fold_batchnorm is never exercised.
    assert cnn["BatchNormalization"] == cnn["Conv"] == 6 and cnn["Gemm"] == 1
    block = _op_counts(exported["mobilenet_block"].path)
    assert block["HardSwish"] == 2 and block["HardSigmoid"] == 1 and block["BatchNormalization"] == 3
    depthwise = [n for n in onnx.load(str(exported["mobilenet_block"].path)).graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i == 64 for a in n.attribute)]
    assert len(depthwise) == 1
    encoder = _op_counts(exported["transformer_encoder"].path)
    # 4 nn.LayerNorm export as LayerNormalization; the final norm stays decomposed.
    assert encoder["LayerNormalization"] == 4
    assert encoder["ReduceMean"] == 2 and encoder["Pow"] == 1 and encoder["Sqrt"] == 1
    assert encoder["Softmax"] == 2 and encoder["Erf"] == 2


def test_builders_are_deterministic(tmp_path: Path, exported: dict[str, ExportedModel]) -> None:
    again = BUILDERS["small_cnn"](tmp_path)
    feeds = again.random_inputs(3)
    first = exported["small_cnn"].torch_outputs(feeds)["logits"]
    assert np.array_equal(first, again.torch_outputs(feeds)["logits"])


def test_minilm_export_signature(minilm_path: Path) -> None:
    graph = onnx.load(str(minilm_path), load_external_data=False).graph
    assert [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in graph.input] == [
        (name, onnx.TensorProto.INT64, ["batch", "sequence"]) for name in INPUT_NAMES]
    assert [(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in graph.output] == [
        ("sentence_embedding", onnx.TensorProto.FLOAT, ["batch", EMBEDDING_DIM])]


def test_minilm_export_matches_sentence_transformers(minilm_path: Path) -> None:
    session = ort.InferenceSession(str(minilm_path), providers=["CPUExecutionProvider"])
    for sentences in (SAMPLE_SENTENCES, SAMPLE_SENTENCES[-2:], SAMPLE_SENTENCES[:1]):
        got = session.run(["sentence_embedding"], tokenize(sentences))[0]
        want = reference_embeddings(sentences)
        cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cosine.min() >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tokenize_pads_to_the_longest_sentence() -> None:
    feeds = tokenize(["Hi!", "A somewhat longer sentence than the first."])
    assert set(feeds) == set(INPUT_NAMES)
    lengths = feeds["attention_mask"].sum(1)
    assert all(a.dtype == np.int64 and a.shape == (2, lengths.max()) for a in feeds.values())
    assert lengths[0] < lengths[1] and feeds["input_ids"][0, lengths[0]:].tolist() == [0] * (lengths[1] - lengths[0])
    assert tokenize(["word " * 500], max_length=16)["input_ids"].shape == (1, 16)


def test_default_model_path_reuses_its_cache(minilm_path: Path, tmp_path: Path) -> None:
    # A private copy of the cache: other test workers may be writing to the shared one.
    cached = tmp_path / minilm_path.name
    shutil.copy2(minilm_path, cached)
    before = cached.stat().st_mtime_ns
    assert default_model_path(cache_dir=tmp_path) == cached
    assert cached.stat().st_mtime_ns == before
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]

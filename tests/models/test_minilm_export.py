"""The embedded default model's export is float32 whatever type its checkpoint stores: transformers 5
loads a float16 checkpoint as float16, and an export of that module would be a float16 graph (its
"fp32" reference and every calibration with it in float16)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def test_float16_checkpoint_exports_a_float32_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from kiln.models import minilm

    real = minilm._weights_dir()
    half = tmp_path / "half"
    shutil.copytree(real, half)
    weights = load_file(str(real / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(half / "model.safetensors"))
    monkeypatch.setattr(minilm, "_weights_dir", lambda: half)
    module = minilm.embedding_module()
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    model = onnx.load(str(minilm.export_minilm_onnx(tmp_path / "minilm.onnx")))
    floats = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(i.data_type == onnx.TensorProto.FLOAT for i in floats)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # The weights are the checkpoint's float16 values, exactly.
    emb = next(i for i in model.graph.initializer if "word_embeddings" in i.name)
    want = weights["embeddings.word_embeddings.weight"].half().float().numpy()
    assert np.array_equal(onnx.numpy_helper.to_array(emb), want)

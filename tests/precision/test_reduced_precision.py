"""fp16/bf16 engines: bindings keep the model's types, math runs in the reduced type,
and outputs stay close to fp32 (the tolerance table for reduced precision)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import builders  # noqa: E402

# precision -> minimum cosine similarity of every output row to the fp32 engine's
MIN_COSINE = {"fp16": 0.999, "bf16": 0.99}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision")
    return {"small_cnn": builders.small_cnn(folder), "transformer_encoder": builders.transformer_encoder(folder)}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", ["small_cnn", "transformer_encoder"])
def test_reduced_precision_engine_tracks_fp32(models, name, precision, device):
    model = models[name]
    feeds = model.random_inputs(4, seed=1)
    shapes = {k: v.shape for k, v in feeds.items()}
    fp32 = kiln.build(str(model.path), kiln.BuildConfig(device=device, profiles=(kiln.Profile.static(shapes),)))
    low = kiln.build(str(model.path), kiln.BuildConfig(device=device, precision=precision,
                                                       profiles=(kiln.Profile.static(shapes),)))
    assert [b.dtype for b in low.plan.inputs] == [b.dtype for b in fp32.plan.inputs]
    assert [b.dtype for b in low.plan.outputs] == ["float32"] * len(low.plan.outputs)
    target = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    compute = [s for s in low.plan.slots if s.kind == "const" and s.dtype in ("float32", target)]
    assert compute and all(s.dtype == target for s in compute)  # every float weight was converted
    want, got = fp32(**feeds), low(**feeds)
    for out_name, w in want.items():
        g = got[out_name]
        assert g.dtype == np.float32 and g.shape == w.shape
        w2, g2 = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
        cos = (w2 * g2).sum(1) / (np.linalg.norm(w2, axis=1) * np.linalg.norm(g2, axis=1))
        assert cos.min() >= MIN_COSINE[precision], (out_name, cos.min())

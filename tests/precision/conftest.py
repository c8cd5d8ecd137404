"""Shared fixtures of the precision tests: a tiny exported BERT (its attention, merged Q/K/V
projection and Transpose/Reshape chains are what the attention quantization passes match)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for folder in (REPO, Path(__file__).resolve().parent):   # benchmarks.models; tiny_bert
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from tiny_bert import BATCH, SEQ, TINY_BERT  # noqa: E402


@pytest.fixture(scope="session")
def bert(tmp_path_factory):  # noqa: ANN001, ANN201
    """(ONNX path, three feed dicts of batch BATCH, the static profile) of a tiny exported BERT."""
    from benchmarks import models
    from kiln.config import Profile

    model = models.bert(0, name="tiny_bert", seq=SEQ, **TINY_BERT)
    path = models.export_onnx(model, tmp_path_factory.mktemp("bert"))
    feeds = [{k: v.numpy() for k, v in models.make_inputs(model, BATCH, seed=s).items()} for s in range(3)]
    profile = Profile.from_ranges(models.profile_ranges(model, [BATCH]))
    return str(path), feeds, profile

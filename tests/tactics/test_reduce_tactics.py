"""ReduceSum.torch / ReduceMean.torch / ReduceL2.torch (tactics/reduce.py): one-pass
float32-accumulating reductions, against the reference (which widens 16-bit input first), across
axes, keepdims, negative axes, no axes and noop_with_empty_axes; offered on CUDA for float16
and bfloat16 data (ReduceL2 for float32 too). The kernels are torch calls, so they run on CPU
tensors here (float32 sums and means too, though not offered for it)."""
from __future__ import annotations

import pytest
import torch

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference.registry import lookup
from kiln.tactics.reduce import reduce_l2, reduce_mean, reduce_sum
from kiln.tactics.registry import TacticQuery, candidates

CASES = [
    (dict(axes=[1]), {}),                                   # MiniLM's mean pooling: over the sequence
    (dict(axes=[1]), dict(keepdims=0)),
    (dict(axes=[-1, 0]), {}),
    (dict(axes=None), {}),                                  # every axis
    (dict(axes=None), dict(noop_with_empty_axes=1)),        # the identity
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("axes, attrs", CASES)
@pytest.mark.parametrize("op, kernel", [("ReduceSum", reduce_sum), ("ReduceMean", reduce_mean), ("ReduceL2", reduce_l2)])
def test_matches_reference(op, kernel, axes, attrs, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 128, 24, generator=g) * 3).to(dtype)
    ax = None if axes["axes"] is None else torch.tensor(axes["axes"], dtype=torch.int64)
    want = lookup(op).fn(x, ax, **attrs)
    got = kernel(x, ax, **attrs)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert mismatch(got, want) is None


def test_offered_for_half_types_on_cuda_only():
    for dtype, offered in (("float16", True), ("bfloat16", True), ("float32", False)):
        names = [t.name for t in candidates(TacticQuery("ReduceSum", "cuda", (dtype, "int64"), {}))]
        assert ("ReduceSum.torch" in names) is offered and names[-1] == "ReduceSum.reference"
        l2 = [t.name for t in candidates(TacticQuery("ReduceL2", "cuda", (dtype, "int64"), {}))]
        assert "ReduceL2.torch" in l2 and l2[-1] == "ReduceL2.reference"   # float32 too (one kernel for three)
    assert [t.name for t in candidates(TacticQuery("ReduceMean", "cpu", ("float16", "int64"), {}))] == \
        ["ReduceMean.reference"]


@pytest.mark.gpu
def test_gpu_minilm_pooling_sum():
    x = torch.randn(256, 128, 384, device="cuda").half()
    axes = torch.tensor([1])
    assert mismatch(reduce_sum(x, axes, keepdims=0), lookup("ReduceSum").fn(x, axes, keepdims=0)) is None

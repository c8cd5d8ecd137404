"""Tactics that call torch's own kernels, against the reference ops: MaxPool.torch (Y only, across
pads, auto_pad, ceil mode, dilations and ranks; offered only when the node does not use Indices)
and LayerNormalization.torch."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference.registry import lookup
from kiln.tactics.pool import max_pool
from kiln.tactics.registry import TacticQuery, candidates

CASES = [
    ((2, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),      # ResNet stem
    ((1, 2, 8, 7), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 8, 7), dict(kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 2, 0])),      # asymmetric
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 2, 10, 10), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 2, 2], strides=[1, 2, 2])),
]


@pytest.mark.parametrize("shape, attrs", CASES)
def test_matches_reference_y(shape, attrs) -> None:
    x = torch.randn(shape)
    want = lookup("MaxPool").fn(x, **attrs)[0]
    got = max_pool(x, **attrs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_offered_only_without_indices() -> None:
    query = TacticQuery("MaxPool", "cuda", ("float16",), {"kernel_shape": [3, 3]}, (), "nchw", 1)
    assert candidates(query)[0].name == "MaxPool.torch"
    both = TacticQuery("MaxPool", "cuda", ("float16",), {"kernel_shape": [3, 3]}, (), "nchw", 2)
    assert [t.name for t in candidates(both)] == ["MaxPool.reference"]


def test_torch_layer_norm_matches_reference_y() -> None:
    from kiln.tactics.norm import torch_layer_norm
    x, scale, b = torch.randn(3, 5, 16), torch.randn(16), torch.randn(1, 16)
    want = lookup("LayerNormalization").fn(x, scale, b, axis=-1, epsilon=1e-6)[0]
    torch.testing.assert_close(torch_layer_norm(x, scale, b, axis=-1, epsilon=1e-6), want)
    scale2 = torch.randn(5, 16)
    want = lookup("LayerNormalization").fn(x, scale2, None, axis=1)[0]
    torch.testing.assert_close(torch_layer_norm(x, scale2, None, axis=1), want)

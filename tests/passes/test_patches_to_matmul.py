from __future__ import annotations

import numpy as np
import pytest

from graphs import Builder, check_pass, ops
from kiln.passes.patches_to_matmul import patches_to_matmul


def _patch_conv(x_shape=(2, 3, 8, 12), oc=5, k=(4, 4), bias=True, **attrs):
    b = Builder()
    x = b.input("x", x_shape)
    conv = {"kernel_shape": list(k), "strides": list(k), **attrs}
    y = b.op("Conv", x, b.rand(oc, x_shape[1], *k), b.rand(oc, name="b") if bias else None, **conv)
    return b, y


def test_vit_patch_embedding_becomes_one_gemm_over_patches():
    # A ViT's patch embedding and the flatten(2).transpose(1, 2) after it.
    b, y = _patch_conv()
    flat = b.op("Reshape", y, b.const([2, 5, 6], dtype="int64"))
    b.output(b.op("Transpose", flat, perm=[0, 2, 1]))
    assert check_pass(patches_to_matmul, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Reshape": 3, "Transpose": 3, "MatMul": 1, "Add": 1}
    matmul = next(n for n in b.graph.nodes if n.op == "MatMul")
    assert matmul.input(0).shape == (2, 2, 3, 48) and matmul.input(1).shape == (48, 5)
    assert matmul.fused_from == (next(n for n in b.graph.nodes if n.op == "Transpose" and
                                      n.attrs["perm"] == [0, 3, 1, 2]).fused_from[0],)
    patches = matmul.input(0).producer().input(0).producer()
    assert patches.op == "Transpose" and patches.attrs["perm"] == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("k, attrs", [((2, 3), {}), ((2, 2), {"auto_pad": "VALID", "dilations": [1, 1]})])
def test_rectangular_patches_no_bias_and_a_graph_output(k, attrs):
    b, y = _patch_conv(x_shape=(1, 4, 6, 12), oc=3, k=k, bias=False, **attrs)
    b.output(y)
    assert check_pass(patches_to_matmul, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Reshape": 2, "Transpose": 2, "MatMul": 1}
    assert b.graph.outputs[0].producer().attrs["perm"] == [0, 3, 1, 2]


@pytest.mark.parametrize("x_shape, k, attrs", [
    ((1, 3, 8, 8), (3, 3), {}),                                   # 8 not divisible by 3: the edge is dropped
    ((1, 3, 8, 8), (2, 2), {"pads": [1, 1, 1, 1]}),
    ((1, 4, 8, 8), (2, 2), {"group": 2}),
    ((1, 3, 8, 8), (1, 1), {}),                                   # 1x1: pixels, not patches
])
def test_convs_that_are_not_patch_grids_stay(x_shape, k, attrs):
    b = Builder()
    x = b.input("x", x_shape)
    group = attrs.get("group", 1)
    b.output(b.op("Conv", x, b.rand(4, x_shape[1] // group, *k), kernel_shape=list(k), strides=list(k), **attrs))
    assert not patches_to_matmul(b.graph) and ops(b.graph) == {"Conv": 1}


def test_overlapping_windows_and_channels_last_graphs_stay():
    b = Builder()
    x = b.input("x", (1, 3, 8, 8))
    b.output(b.op("Conv", x, b.rand(4, 3, 4, 4), kernel_shape=[4, 4], strides=[2, 2]))
    assert not patches_to_matmul(b.graph)
    b, y = _patch_conv()
    b.output(b.op("Conv", y, b.rand(4, 5, 1, 1)))
    b.graph.layout = "nhwc"                       # a convolution-heavy graph keeps its convs
    assert not patches_to_matmul(b.graph) and ops(b.graph) == {"Conv": 2}


def test_the_only_conv_of_a_channels_last_graph_is_rewritten_and_the_layout_decided_again():
    b, y = _patch_conv()
    b.output(y)
    b.graph.layout = "nhwc"                       # choose_layout's verdict for this one conv
    assert check_pass(patches_to_matmul, b, rtol=1e-4, atol=1e-5)
    assert "Conv" not in ops(b.graph) and b.graph.layout == "nchw"


def test_explicit_qdq_conv_is_left_for_fuse_qdq():
    b = Builder()
    x = b.input("x", (1, 3, 8, 8))
    scale, zp = b.const(0.05), b.const(0, dtype="int8")
    xq = b.op("DequantizeLinear", b.op("QuantizeLinear", x, scale, zp), scale, zp)
    b.output(b.op("Conv", xq, b.rand(4, 3, 4, 4), kernel_shape=[4, 4], strides=[4, 4]))
    assert not patches_to_matmul(b.graph) and ops(b.graph)["Conv"] == 1


def test_symbolic_batch_reshapes_copy_it():
    b, y = _patch_conv(x_shape=(3, 3, 8, 8), k=(4, 4))
    b.output(y)
    b.graph.inputs[0].shape = ("N", 3, 8, 8)
    assert patches_to_matmul(b.graph)
    shapes = [n.input(1).const for n in b.graph.nodes if n.op == "Reshape"]
    assert [list(np.asarray(s)) for s in shapes] == [[0, 3, 2, 4, 2, 4], [0, 2, 2, 48]]
    assert b.graph.outputs[0].shape == (3, 5, 2, 2)

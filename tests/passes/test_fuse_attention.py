from __future__ import annotations

import pytest

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_attention import fuse_attention

B, H, S, D = 2, 3, 5, 8


def _qkv(b: Builder):
    return b.input("q", (B, H, S, D)), b.input("k", (B, H, S, D)), b.input("v", (B, H, S, D))


@pytest.mark.parametrize("scale_op,mask", [("Div", True), ("Mul", False), (None, True)])
def test_transposed_k_scale_and_mask(scale_op, mask):
    b = Builder()
    q, k, v = _qkv(b)
    s = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    if scale_op == "Div":
        s = b.op("Div", s, b.const(8 ** 0.5))
    elif scale_op == "Mul":
        s = b.op("Mul", b.const(0.25), s)
    m = b.input("mask", (B, 1, 1, S)) if mask else None
    if m is not None:
        s = b.op("Add", s, m)
    g = b.output(b.op("MatMul", b.op("Softmax", s, axis=-1), v))
    assert check_pass(fuse_attention, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"kiln::Attention": 1}
    node = g.nodes[0]
    assert node.inputs[:3] == (q, k, v) and (node.input(3) is m)
    want = {"Div": 8 ** -0.5, "Mul": 0.25, None: 1.0}[scale_op]
    assert node.attrs["scale"] == pytest.approx(want)


def test_pre_transposed_k_and_split_scale():
    b = Builder()
    q = b.input("q", (B, H, S, D))
    kt = b.input("kt", (B, H, D, S))
    v = b.input("v", (B, H, S, D))
    c = b.const(D ** -0.25)
    s = b.op("MatMul", b.op("Mul", q, c), b.op("Mul", kt, c))
    g = b.output(b.op("MatMul", b.op("Softmax", s, axis=3), v))
    assert check_pass(fuse_attention, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"Transpose": 1, "kiln::Attention": 1}
    att = g.nodes[1]
    assert att.input(0) is q and att.input(1).producer() is g.nodes[0] and att.input(1).shape == (B, H, S, D)
    assert att.attrs["scale"] == pytest.approx(D ** -0.5)


def test_softmax_on_other_axis_or_shared_probs_is_left():
    b = Builder()
    q, k, v = _qkv(b)
    p = b.op("Softmax", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), axis=2)
    b.output(b.op("MatMul", p, v))
    assert not check_pass(fuse_attention, b)

    b = Builder()
    q, k, v = _qkv(b)
    p = b.op("Softmax", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
    b.output(b.op("MatMul", p, v), p)
    assert not check_pass(fuse_attention, b)

from __future__ import annotations

import pytest

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_layernorm import fuse_layernorm


def _decomposed(b: Builder, x, axes=(-1,), square="Pow", divide="Div", affine=True):
    ax = b.const(list(axes), dtype="int64")
    d = b.op("Sub", x, b.op("ReduceMean", x, ax))
    sq = b.op("Pow", d, b.const(2.0)) if square == "Pow" else b.op("Mul", d, d)
    std = b.op("Sqrt", b.op("Add", b.op("ReduceMean", sq, ax), b.const(1e-5)))
    y = b.op("Div", d, std) if divide == "Div" else b.op("Mul", b.op("Reciprocal", std), d)
    if affine:
        y = b.op("Add", b.op("Mul", y, b.rand(x.shape[-1])), b.rand(x.shape[-1]))
    return y


@pytest.mark.parametrize("square,divide", [("Pow", "Div"), ("Mul", "Mul")])
def test_torch_export_form(square, divide):
    b = Builder()
    x = b.input("x", (2, 5, 16))
    g = b.output(_decomposed(b, x, square=square, divide=divide))
    assert check_pass(fuse_layernorm, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"LayerNormalization": 1}
    node = g.nodes[0]
    assert node.attrs == {"axis": -1, "epsilon": pytest.approx(1e-5)} and node.input(0) is x


def test_two_trailing_axes_without_affine():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    g = b.output(_decomposed(b, x, axes=(1, 2), affine=False))
    assert check_pass(fuse_layernorm, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"LayerNormalization": 1}
    assert g.nodes[0].attrs["axis"] == -2 and g.nodes[0].input(1).shape == (3, 4)


def test_not_fused_over_leading_axis_or_when_mean_is_shared():
    b = Builder()
    x = b.input("x", (2, 3, 4))
    b.output(_decomposed(b, x, axes=(1,), affine=False))
    assert not check_pass(fuse_layernorm, b)

    b = Builder()
    x = b.input("x", (2, 8))
    y = _decomposed(b, x)
    d = next(n for n in b.graph.nodes if n.op == "Sub").outputs[0]
    g = b.output(y, d)
    assert not check_pass(fuse_layernorm, b)
    assert "LayerNormalization" not in ops(g)

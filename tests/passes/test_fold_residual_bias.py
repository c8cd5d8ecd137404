from __future__ import annotations

import numpy as np

from graphs import Builder, check_pass
from kiln.passes.fold_residual_bias import fold_residual_bias
from kiln.passes.match import const_array


def _fused(b: Builder, x, r, bias=True, activation="Relu"):
    return b.op("FusedConv", x, b.rand(8, 4, 3, 3), b.rand(8, name="b") if bias else None, r, domain="kiln",
                pads=[1, 1, 1, 1], activation=activation, activation_params=[])


def test_downsample_bias_joins_the_consumer_bias():
    # ResNet's downsample block: relu(conv3(h) + b3 + (downsample(x) + bd)).
    b = Builder()
    x = b.input("x", (2, 4, 6, 6))
    bd = b.rand(8, name="bd")
    r = b.op("Conv", x, b.rand(8, 4, 1, 1), bd)
    y = _fused(b, x, r)
    g = b.output(y)
    b3 = const_array(y.producer().input(2)).copy()
    assert check_pass(fold_residual_bias, b, rtol=1e-5, atol=1e-5)
    down, fused = (n for n in g.nodes if n.op in ("Conv", "FusedConv"))
    assert len(down.inputs) == 2 and fused.input(3) is r
    np.testing.assert_allclose(const_array(fused.input(2)), b3 + const_array(bd), rtol=1e-6)
    assert const_array(fused.input(2)).dtype == np.float32


def test_consumer_without_bias_and_a_fused_source_without_activation():
    b = Builder()
    x, r0 = b.input("x", (2, 4, 6, 6)), b.input("r0", (2, 8, 6, 6))
    bd = b.rand(8, name="bd")
    r = b.op("FusedConv", x, b.rand(8, 4, 1, 1), bd, r0, domain="kiln", activation="", activation_params=[])
    g = b.output(_fused(b, x, r, bias=False))
    assert check_pass(fold_residual_bias, b, rtol=1e-5, atol=1e-5)
    source, fused = g.nodes
    assert source.inputs[2:] == (None, r0)
    np.testing.assert_array_equal(const_array(fused.input(2)), const_array(bd))


def test_kept_when_the_residual_is_read_elsewhere_or_activated():
    b = Builder()
    x = b.input("x", (2, 4, 6, 6))
    r = b.op("Conv", x, b.rand(8, 4, 1, 1), b.rand(8, name="bd"))
    b.output(_fused(b, x, r), r)  # r is a graph output: its bias must stay in it
    assert not check_pass(fold_residual_bias, b)

    b = Builder()
    x = b.input("x", (2, 4, 6, 6))
    r = b.op("FusedConv", x, b.rand(8, 4, 1, 1), b.rand(8, name="bd"), domain="kiln", activation="Relu",
             activation_params=[])
    b.output(_fused(b, x, r))  # relu(conv + bd): the bias is not linear in the output
    assert not check_pass(fold_residual_bias, b)

    b = Builder()
    x, r = b.input("x", (2, 4, 6, 6)), b.input("r", (2, 8, 6, 6))
    b.output(_fused(b, x, r))  # a residual no conv makes
    assert not check_pass(fold_residual_bias, b)

from __future__ import annotations

import pytest

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_epilogues import fuse_epilogues


def _conv(b: Builder, x, bias: bool = True):
    return b.op("Conv", x, b.rand(4, 3, 3, 3), *([b.rand(4)] if bias else []), pads=[1, 1, 1, 1])


@pytest.mark.parametrize("act,attrs,extra", [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.2}, []), ("Sigmoid", {}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []), ("HardSwish", {}, []), ("Tanh", {}, []),
    ("Gelu", {"approximate": "tanh"}, []), ("Clip", {}, [0.0, 6.0]),
])
def test_conv_bias_residual_activation(act, attrs, extra):
    b = Builder()
    x = b.input("x", (2, 3, 6, 6))
    r = b.input("r", (2, 4, 6, 6))
    y = b.op("Add", _conv(b, x, bias=False), b.rand(1, 4, 1, 1))
    y = b.op("Add", r, y)
    y = b.op(act, y, *[b.const(v) for v in extra], **attrs)
    g = b.output(y)
    assert check_pass(fuse_epilogues, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"kiln::FusedConv": 1}
    node = g.nodes[0]
    assert node.attrs["activation"] == act and node.input(3) is r and node.outputs[0] is y
    assert node.input(2).shape == (4,)


def test_conv_silu_and_bias_combined_with_existing_bias():
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    y = b.op("Add", _conv(b, x), b.rand(4, 1, 1))
    y = b.op("Mul", y, b.op("Sigmoid", y))
    g = b.output(y)
    assert check_pass(fuse_epilogues, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"kiln::FusedConv": 1}
    assert g.nodes[0].attrs["activation"] == "Silu" and g.nodes[0].input(3) is None


def test_matmul_bias_gelu_and_gemm():
    b = Builder()
    x = b.input("x", (2, 5, 8))
    y = b.op("Gelu", b.op("Add", b.op("MatMul", x, b.rand(8, 6)), b.rand(6)))
    a = b.input("a", (5, 8))
    z = b.op("Relu", b.op("Gemm", a, b.rand(6, 8), b.rand(1, 6), transB=1, alpha=0.5, beta=2.0))
    g = b.output(y, z)
    assert check_pass(fuse_epilogues, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"kiln::FusedMatMul": 2}
    gemm = g.nodes[1]
    assert gemm.attrs["trans_b"] == 1 and gemm.attrs["alpha"] == 0.5 and gemm.input(2).shape == (6,)


def test_matmul_residual_only():
    b = Builder()
    x = b.input("x", (4, 8))
    r = b.input("r", (4, 6))
    g = b.output(b.op("Add", b.op("MatMul", x, b.rand(8, 6)), r))
    assert check_pass(fuse_epilogues, b)
    assert ops(g) == {"kiln::FusedMatMul": 1} and g.nodes[0].input(3) is r


def test_not_fused_when_intermediate_is_shared_or_output():
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    y = _conv(b, x)
    b.output(b.op("Relu", y), b.op("Neg", y))
    assert not check_pass(fuse_epilogues, b)

    b = Builder()
    x = b.input("x", (4, 8))
    y = b.op("MatMul", x, b.rand(8, 6))
    b.output(b.op("Relu", y), y)
    assert not check_pass(fuse_epilogues, b)


def test_bare_layers_transposed_gemm_and_broadcast_add_are_left():
    b = Builder()
    x = b.input("x", (8, 4))
    y = b.op("Relu", b.op("Gemm", x, b.rand(8, 6), transA=1))
    z = b.op("MatMul", b.input("a", (4, 8)), b.rand(8, 6))
    w = b.op("Add", b.op("MatMul", b.input("c", (6, 8)), b.rand(8, 6)), b.rand(3, 6, 6))
    g = b.output(y, z, w)
    assert not check_pass(fuse_epilogues, b)
    assert ops(g) == {"Gemm": 1, "Relu": 1, "MatMul": 2, "Add": 1}

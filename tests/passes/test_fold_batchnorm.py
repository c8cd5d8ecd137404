from __future__ import annotations


from graphs import Builder, check_pass, ops
from kiln.passes.fold_batchnorm import fold_batchnorm


def _bn(b: Builder, x, c: int, **attrs):
    return b.op("BatchNormalization", x, b.rand(c, name="gamma"), b.rand(c, name="beta"),
                b.rand(c, name="mean"), b.rand(c, name="var", positive=True), **attrs)


def test_conv_bn_folds_into_conv():
    b = Builder()
    x = b.input("x", (1, 3, 8, 8))
    y = b.op("Conv", x, b.rand(4, 3, 3, 3), b.rand(4), pads=[1, 1, 1, 1])
    b.output(_bn(b, y, 4, epsilon=1e-3))
    assert check_pass(fold_batchnorm, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Conv": 1}
    assert b.graph.nodes[0].attrs["pads"] == [1, 1, 1, 1]


def test_grouped_conv_without_bias():
    b = Builder()
    x = b.input("x", (1, 4, 6, 6))
    y = b.op("Conv", x, b.rand(4, 1, 3, 3), group=4)
    b.output(_bn(b, y, 4))
    assert check_pass(fold_batchnorm, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Conv": 1}
    assert len(b.graph.nodes[0].inputs) == 3


def test_gemm_and_matmul_bn():
    b = Builder()
    x = b.input("x", (5, 6))
    y = b.op("Gemm", x, b.rand(4, 6), b.rand(4), transB=1, alpha=0.5, beta=2.0)
    z = b.op("MatMul", x, b.rand(6, 4))
    b.output(_bn(b, y, 4), _bn(b, z, 4))
    assert check_pass(fold_batchnorm, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Gemm": 1, "MatMul": 1, "Add": 1}


def test_conv_with_two_consumers_becomes_mul_add_and_conv_stays():
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    y = b.op("Conv", x, b.rand(4, 3, 1, 1))
    b.output(_bn(b, y, 4), b.op("Neg", y))
    conv = b.graph.nodes[0]
    w = conv.input(1)
    assert check_pass(fold_batchnorm, b, rtol=1e-4, atol=1e-5)
    assert ops(b.graph) == {"Conv": 1, "Neg": 1, "Mul": 1, "Add": 1}
    assert conv.input(1) is w


def test_bn_with_runtime_statistics_is_left_alone():
    b = Builder()
    x = b.input("x", (1, 3, 5, 5))
    mean = b.input("mean", (3,))
    y = b.op("Conv", x, b.rand(3, 3, 1, 1))
    b.output(b.op("BatchNormalization", y, b.rand(3), b.rand(3), mean, b.rand(3, positive=True)))
    assert not check_pass(fold_batchnorm, b)
    assert ops(b.graph) == {"Conv": 1, "BatchNormalization": 1}

from __future__ import annotations

import math

import pytest

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_gelu import fuse_gelu


def _erf_gelu(b: Builder, x, form: str):
    scaled = b.op("Div", x, b.const(1.4142135)) if form != "mul" else b.op("Mul", x, b.const(0.70710677))
    p = b.op("Add", b.op("Erf", scaled), b.const(1.0))
    if form == "half_first":
        return b.op("Mul", b.op("Mul", x, b.const(0.5)), p)
    if form == "half_of_p":
        return b.op("Mul", x, b.op("Mul", p, b.const(0.5)))
    return b.op("Mul", b.op("Mul", x, p), b.const(0.5))


@pytest.mark.parametrize("form", ["torch", "mul", "half_first", "half_of_p"])
def test_erf_forms(form):
    b = Builder()
    x = b.input("x", (3, 8))
    g = b.output(_erf_gelu(b, x, form))
    assert check_pass(fuse_gelu, b)
    assert ops(g) == {"Gelu": 1} and g.nodes[0].input(0) is x and g.nodes[0].attrs == {}


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_form(cube):
    b = Builder()
    x = b.input("x", (3, 8))
    x3 = b.op("Pow", x, b.const(3.0)) if cube == "pow" else b.op("Mul", x, b.op("Mul", x, x))
    inner = b.op("Mul", b.op("Add", x, b.op("Mul", x3, b.const(0.044715))), b.const(math.sqrt(2 / math.pi)))
    p = b.op("Add", b.op("Tanh", inner), b.const(1.0))
    g = b.output(b.op("Mul", b.op("Mul", b.const(0.5), x), p))
    assert check_pass(fuse_gelu, b)
    assert ops(g) == {"Gelu": 1} and g.nodes[0].attrs == {"approximate": "tanh"}


def test_wrong_constant_or_shared_intermediate_is_left():
    b = Builder()
    x = b.input("x", (4,))
    p = b.op("Add", b.op("Erf", b.op("Div", x, b.const(2.0))), b.const(1.0))
    b.output(b.op("Mul", b.op("Mul", x, p), b.const(0.5)))
    assert not check_pass(fuse_gelu, b)

    b = Builder()
    x = b.input("x", (4,))
    y = _erf_gelu(b, x, "torch")
    erf = next(n for n in b.graph.nodes if n.op == "Erf").outputs[0]
    b.output(y, erf)
    assert not check_pass(fuse_gelu, b)

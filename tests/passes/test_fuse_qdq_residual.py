"""fuse_qdq_residual: an explicitly quantized residual block's DQ -> Add -> [Relu] -> Q folded into the
kiln::QConv before it (mid quantization, the shortcut read as codes): the structure after the pass,
outputs within one code of the unfused graph (float64 against float32 ties), and where it must not
fold. The ONNX Runtime model test is in tests/passes/test_fuse_qdq.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphs import Builder, ops
from kiln.ir import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantized import QCONV_INPUTS, qconv
from kiln.passes.fuse_qdq import fuse_qdq
from kiln.passes.fuse_qdq_residual import fuse_qdq_residual

RNG = np.random.default_rng(1)
SHAPE = (2, 8, 6, 6)


def block(relu: bool = False, conv_relu: bool = False, c_scale: float = 0.05, dq_scale: float = 0.05,
          shortcut_shape: tuple = SHAPE, add_is_output: bool = False, code: str = "uint8"):
    """x_q -> DQ -> Conv(DQ(w)) -> [Relu] -> Q(c) -> DQ -> Add(DQ(r_q)) -> [Relu] -> Q(y): ONNX
    Runtime's QDQ bottleneck ending (uint8 or int8 codes with zero points)."""
    b = Builder()
    lo, hi = (0, 256) if code == "uint8" else (-128, 128)
    x = b.input("x", SHAPE, code, data=RNG.integers(lo, hi, SHAPE).astype(code))
    r = b.input("r", shortcut_shape, code, data=RNG.integers(lo, hi, shortcut_shape).astype(code))
    zp = lambda v, name: b.const(v if code == "uint8" else v - 128, name, dtype=code)  # noqa: E731
    w = b.op("DequantizeLinear", b.const(RNG.integers(-127, 128, (8, 8, 3, 3)), "wq", dtype="int8"),
             b.const(RNG.uniform(0.01, 0.03, 8), "ws"), b.const(np.zeros(8), "wz", dtype="int8"), axis=0)
    c = b.op("Conv", b.op("DequantizeLinear", x, b.const(0.04, "xs"), zp(120, "xz")), w, pads=[1, 1, 1, 1])
    if conv_relu:
        c = b.op("Relu", c)
    c = b.op("DequantizeLinear", b.op("QuantizeLinear", c, b.const(c_scale, "cs"), zp(131, "cz")),
             b.const(dq_scale, "cs2"), zp(131, "cz2"))
    s = b.op("Add", c, b.op("DequantizeLinear", r, b.const(0.03, "rs"), zp(100, "rz")))
    t = b.op("Relu", s) if relu else s
    y = b.op("QuantizeLinear", t, b.const(0.07, "ys"), zp(90, "yz"))
    return b, b.output(y, s) if add_is_output else b.output(y)


def _run(b: Builder) -> bool:
    """fuse_qdq, then the pass: outputs within one code of the unfused graph's."""
    before = run_graph(b.graph, b.feeds)
    fuse_qdq(b.graph)
    changed = fuse_qdq_residual(b.graph)
    verify(b.graph)
    after = run_graph(b.graph, b.feeds)
    for o in b.graph.outputs:
        assert after[o.name].dtype == before[o.name].dtype
        diff = (after[o.name].double() - before[o.name].double()).abs()
        assert diff.max() <= 1 and float((diff == 0).double().mean()) > 0.99, o.name
    return changed


@pytest.mark.parametrize("code", ["uint8", "int8"])
@pytest.mark.parametrize("relu", [False, True], ids=["add", "add-relu"])
def test_block_ending_folds_into_the_conv(relu, code):
    b, g = block(relu=relu, code=code)
    assert _run(b)
    assert ops(g) == {"kiln::QConv": 1}
    conv = g.nodes[0]
    names = dict(zip(QCONV_INPUTS, conv.inputs))
    assert names["residual"].name == "r" and names["mid_scale"].name == "cs" and names["out_scale"].name == "ys"
    assert names["residual_zp"].name == "rz" and names["mid_zp"].name == "cz" and names["out_zp"].name == "yz"
    assert conv.attrs["activation"] == ("Relu" if relu else "") and conv.outputs[0] is g.outputs[0]
    assert conv.outputs[0].dtype.name == code


def test_rounding_to_the_conv_codes_is_kept():
    """The mid quantization matters: a coarse conv scale moves the output against folding without it."""
    b, g = block(c_scale=0.5, dq_scale=0.5)
    assert _run(b)
    conv = g.nodes[0]
    feeds = [None if v is None else torch.as_tensor(v.const if v.is_const else b.feeds[v.name]) for v in conv.inputs]
    with_mid = qconv(*feeds, **conv.attrs)
    without = qconv(*feeds[:13], **conv.attrs)
    assert not torch.equal(with_mid, without)


@pytest.mark.parametrize("kw", [dict(conv_relu=True), dict(dq_scale=0.06), dict(shortcut_shape=(2, 8, 1, 1)),
                                dict(add_is_output=True)],
                         ids=["conv-activation", "other-dq-params", "broadcast-shortcut", "sum-is-an-output"])
def test_what_does_not_fold(kw):
    b, g = block(**kw)
    assert not _run(b)
    assert ops(g).get("Add") == 1 and ops(g).get("kiln::QConv") == 1

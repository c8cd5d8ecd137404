"""fuse_qdq_activation: Q(Relu(DQ(y_q, p)), p) after a quantized layer requantizing with p becomes the
layer's activation, exactly (the codes equal the unfolded graph's), after a residual fold too; and
where it must not fold."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphs import Builder, ops
from kiln.ir import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.passes.fuse_qdq import fuse_qdq
from kiln.passes.fuse_qdq_activation import fuse_qdq_activation
from kiln.passes.fuse_qdq_residual import fuse_qdq_residual

RNG = np.random.default_rng(2)
SHAPE = (2, 8, 5, 5)


def conv_relu(code: str = "int8", zp: int = 0, relu_scale: float = 0.05, residual: bool = False,
              relu_zp: int | None = None):
    """x_q -> DQ -> Conv(DQ(w)) -> Q(p) -> DQ(p) -> [Add(DQ(r)) -> Q -> DQ] -> Relu -> Q: ONNX Runtime's
    QDQ conv with symmetric int8 activations (or QDQKeepRemovableActivations)."""
    b = Builder()
    lo, hi = (0, 256) if code == "uint8" else (-128, 128)
    x = b.input("x", SHAPE, code, data=RNG.integers(lo, hi, SHAPE).astype(code))
    w = b.op("DequantizeLinear", b.const(RNG.integers(-127, 128, (8, 8, 3, 3)), "wq", dtype="int8"),
             b.const(RNG.uniform(0.01, 0.03, 8), "ws"), b.const(np.zeros(8), "wz", dtype="int8"), axis=0)
    p = lambda: (b.const(0.05, "s"), b.const(zp, "z", dtype=code))  # noqa: E731
    c = b.op("Conv", b.op("DequantizeLinear", x, b.const(0.04, "xs"), b.const(zp, "xz", dtype=code)), w,
             pads=[1, 1, 1, 1])
    t = b.op("DequantizeLinear", b.op("QuantizeLinear", c, *p()), *p())
    if residual:
        r = b.input("r", SHAPE, code, data=RNG.integers(lo, hi, SHAPE).astype(code))
        s = b.op("Add", t, b.op("DequantizeLinear", r, b.const(0.03, "rs"), b.const(zp, "rz", dtype=code)))
        t = b.op("DequantizeLinear", b.op("QuantizeLinear", s, *p()), *p())
    y = b.op("QuantizeLinear", b.op("Relu", t), b.const(relu_scale, "ys"),
             b.const(zp if relu_zp is None else relu_zp, "yz", dtype=code))
    return b, b.output(y)


def _fold(b: Builder) -> bool:
    """The QDQ fusions before this pass, then the pass: its fold changes no code."""
    fuse_qdq(b.graph)
    fuse_qdq_residual(b.graph)
    before = run_graph(b.graph, b.feeds)
    changed = fuse_qdq_activation(b.graph)
    verify(b.graph)
    after = run_graph(b.graph, b.feeds)
    for o in b.graph.outputs:
        assert torch.equal(after[o.name], before[o.name]), o.name
    return changed


@pytest.mark.parametrize("code, zp", [("int8", 0), ("uint8", 100), ("int8", -20)])
@pytest.mark.parametrize("residual", [False, True], ids=["conv", "residual-block"])
def test_relu_between_equal_qdq_pairs_becomes_the_activation(code, zp, residual):
    b, g = conv_relu(code, zp, residual=residual)
    assert _fold(b)
    assert ops(g) == {"kiln::QConv": 1}
    conv = g.nodes[0]
    assert conv.attrs["activation"] == "Relu" and conv.outputs[0] is g.outputs[0]
    assert (len(conv.inputs) > 13) == residual                   # the residual fold's mid quantization


@pytest.mark.parametrize("kw", [dict(relu_scale=0.06), dict(relu_zp=3)], ids=["other-scale", "other-zero-point"])
def test_other_parameters_do_not_fold(kw):
    b, g = conv_relu(**kw)
    assert not _fold(b)
    assert ops(g).get("Relu") == 1 or ops(g).get("kiln::Pointwise") == 1

from __future__ import annotations

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_softmax import fuse_softmax


def _softmax(b: Builder, x, axis: int, stable: bool = True, sum_axis: int | None = None):
    if stable:
        x = b.op("Sub", x, b.op("ReduceMax", x, b.const([axis], dtype="int64")))
    e = b.op("Exp", x)
    ax = b.const([axis if sum_axis is None else sum_axis], dtype="int64")
    return b.op("Div", e, b.op("ReduceSum", e, ax))


def test_stable_and_plain_forms():
    b = Builder()
    x = b.input("x", (2, 3, 5))
    g = b.output(_softmax(b, x, -1), _softmax(b, x, 1, stable=False))
    assert check_pass(fuse_softmax, b)
    assert ops(g) == {"Softmax": 2}
    assert [n.attrs["axis"] for n in g.nodes] == [2, 1] and all(n.input(0) is x for n in g.nodes)


def test_mismatched_axes_or_shared_exp_is_left():
    b = Builder()
    x = b.input("x", (2, 3, 5))
    b.output(_softmax(b, x, 2, sum_axis=1))
    assert not check_pass(fuse_softmax, b)

    b = Builder()
    x = b.input("x", (2, 5))
    y = _softmax(b, x, -1)
    e = next(n for n in b.graph.nodes if n.op == "Exp").outputs[0]
    b.output(y, e)
    assert not check_pass(fuse_softmax, b)

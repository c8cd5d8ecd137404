from __future__ import annotations

from graphs import Builder, check_pass
from kiln.passes.refine_shapes import refine_shapes


def _symbolic(*values, dims):
    for v in values:
        v.shape = dims


def test_reshape_constants_then_moves_refine_the_head_size():
    # qkv [B, 4, 24] -> Reshape(Concat(B, 4, 3, 2, 4)) -> Transpose -> Gather(0): the head size
    # 4 was symbolic ("?" from ONNX inference); the constant Concat parts fix it.
    b = Builder()
    qkv = b.input("qkv", (2, 4, 24))
    batch = b.op("Unsqueeze", b.op("Gather", b.op("Shape", qkv), b.const(0, dtype="int64"), axis=0),
                 b.const([0], dtype="int64"))
    shape = b.op("Concat", batch, b.const([4], dtype="int64"), b.const([3, 2, 4], dtype="int64"), axis=0)
    r = b.op("Reshape", qkv, shape)
    t = b.op("Transpose", r, perm=[2, 0, 3, 1, 4])
    q = b.op("Gather", t, b.const(0, dtype="int64"), axis=0)
    sl = b.op("Slice", t, b.const([1], dtype="int64"), b.const([2], dtype="int64"), b.const([0], dtype="int64"))
    k = b.op("Squeeze", sl, b.const([0], dtype="int64"))
    g = b.output(b.op("Relu", q), k)
    _symbolic(qkv, dims=("B", 4, 24))
    _symbolic(r, dims=("B", 4, 3, 2, "h"))
    _symbolic(t, dims=(3, "B", 2, 4, "h"))
    _symbolic(sl, dims=(1, "B", 2, 4, "h"))
    _symbolic(q, k, g.outputs[0], dims=("B", 2, 4, "h"))
    assert check_pass(refine_shapes, b)
    assert r.shape == ("B", 4, 3, 2, 4) and t.shape == (3, "B", 2, 4, 4) and sl.shape == (1, "B", 2, 4, 4)
    assert q.shape == k.shape == g.outputs[0].shape == ("B", 2, 4, 4)
    assert not refine_shapes(b.graph)                    # nothing left to refine


def test_ints_and_ranks_are_never_changed():
    b = Builder()
    x = b.input("x", (2, 6))
    r = b.op("Reshape", x, b.const([3, -1], dtype="int64"))
    g = b.output(r)
    r.shape = (3, "n")                                    # -1 does not fix the dim
    assert not check_pass(refine_shapes, b)
    assert r.shape == (3, "n") and g.outputs[0] is r

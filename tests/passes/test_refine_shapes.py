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
    x.shape = ("B", 6)
    r.shape = (3, "n")                                    # -1 of a symbolic size does not fix the dim
    assert not check_pass(refine_shapes, b)
    assert r.shape == (3, "n") and g.outputs[0] is r


def test_reshape_minus_one_and_zero_from_a_static_input():
    """-1 is what the static input's size leaves; 0 copies the input's dim (allowzero 0)."""
    b = Builder()
    x = b.input("x", (2, 6, 4))
    r = b.op("Reshape", x, b.const([0, -1, 2], dtype="int64"))
    b.output(r)
    r.shape = ("a", "b", 2)
    assert check_pass(refine_shapes, b)
    assert r.shape == (2, 12, 2)


def test_broadcasting_batch_one_embedding_sum():
    """ONNX inference leaves 1 against a symbolic dim unknown: at a static batch of 1 the
    embedding sum [1, S, H] + [1, S, H] stayed [?, S, H], and so did everything after it (the
    norm, the matmul, the shape arithmetic that then could not fold)."""
    b = Builder()
    w = b.input("w", (1, 4, 8))
    p = b.input("p", (1, 4, 8))
    s = b.op("Add", w, p)
    scale, bias = b.const([1.0] * 8), b.const([0.0] * 8)
    n = b.op("LayerNormalization", s, scale, bias, axis=-1)
    m = b.op("MatMul", n, b.const([[0.5] * 3] * 8))
    wide = b.op("Mul", m, b.const([[2.0]]))              # [1, 4, 3] * [1, 1]: rank-2 broadcast
    b.output(wide)
    for v, dims in ((s, ("u", 4, 8)), (n, ("u", 4, 8)), (m, ("u", 4, 3)), (wide, ("u", 4, 3))):
        v.shape = dims
    assert check_pass(refine_shapes, b)
    assert s.shape == n.shape == (1, 4, 8) and m.shape == wide.shape == (1, 4, 3)


def test_broadcast_keeps_a_dim_that_only_a_symbolic_input_sets():
    b = Builder()
    x = b.input("x", (1, 8))
    y = b.input("y", (3, 8))
    s = b.op("Add", x, y)
    b.output(s)
    y.shape = ("B", 8)
    s.shape = ("B", 8)
    assert not check_pass(refine_shapes, b)              # 1 against B: B, whatever it is
    assert s.shape == ("B", 8)


def test_expand_and_batched_matmul_refine():
    """Expand against a constant shape broadcasts; a batched MatMul keeps the broadcast batch
    dims and takes M from A and N from B (an attention's scores and output)."""
    b = Builder()
    m = b.input("m", (1, 1, 1, 6))
    q = b.input("q", (1, 2, 6, 4))
    k = b.input("k", (1, 2, 4, 6))
    mask = b.op("Expand", m, b.const([1, 2, 6, 6], dtype="int64"))
    scores = b.op("MatMul", q, k)
    out = b.op("Add", scores, mask)
    b.output(out)
    mask.shape, scores.shape, out.shape = ("a", "b", "c", "d"), ("e", 2, 6, 6), ("f", "g", 6, 6)
    assert check_pass(refine_shapes, b)
    assert mask.shape == scores.shape == out.shape == (1, 2, 6, 6)


def test_concat_sums_its_axis():
    """A class token [B, 1, C] before the patches [B, 196, C]: [B, 197, C] (ViT)."""
    b = Builder()
    cls = b.input("cls", (2, 1, 8))
    patches = b.input("patches", (2, 6, 8))
    c = b.op("Concat", cls, patches, axis=1)
    b.output(c)
    c.shape = (2, "n", 8)
    assert check_pass(refine_shapes, b)
    assert c.shape == (2, 7, 8)


def test_dynamic_batch_symbol_reaches_the_heads_and_fixes_them():
    """A dynamic batch: ONNX inference names the Reshape's computed batch entry afresh (u1) and
    leaves -1 unknown (u2). The entry is the input's batch read back (Unsqueeze(Gather(Shape(x),
    0))), so it is "B", and -1 is X's size over [B, 4, 2] with B cancelled: 3 heads. Transpose,
    the scores' MatMul and the mask's broadcast then carry B on, and the output Reshape's -1 is
    fixed the same way."""
    b = Builder()
    x = b.input("x", (2, 4, 6))
    mask = b.input("mask", (2, 1, 1, 4))
    batch = b.op("Unsqueeze", b.op("Gather", b.op("Shape", x), b.const(0, dtype="int64"), axis=0),
                 b.const([0], dtype="int64"))
    heads = b.op("Reshape", x, b.op("Concat", batch, b.const([4, -1, 2], dtype="int64"), axis=0))
    q = b.op("Transpose", heads, perm=[0, 2, 1, 3])
    k = b.op("Transpose", heads, perm=[0, 2, 3, 1])
    scores = b.op("Add", b.op("MatMul", q, k), mask)
    ctx = b.op("Transpose", b.op("MatMul", scores, q), perm=[0, 2, 1, 3])
    out = b.op("Reshape", ctx, b.op("Concat", batch, b.const([4, -1], dtype="int64"), axis=0))
    b.output(out)
    x.shape, mask.shape = ("B", 4, 6), ("B", 1, 1, 4)
    heads.shape, q.shape, k.shape = ("u1", 4, "u2", 2), ("u1", "u2", 4, 2), ("u1", "u2", 2, 4)
    scores.producer().inputs[0].shape, scores.shape = ("u3", "u4", 4, 4), ("u5", "u6", 4, 4)
    ctx.producer().inputs[0].shape, ctx.shape, out.shape = ("u7", "u8", 4, 2), ("u7", 4, "u8", 2), ("u9", 4, "u10")
    assert check_pass(refine_shapes, b)
    assert heads.shape == ("B", 4, 3, 2) and q.shape == ("B", 3, 4, 2) and k.shape == ("B", 3, 2, 4)
    assert scores.shape == ("B", 3, 4, 4) and ctx.shape == ("B", 4, 3, 2) and out.shape == ("B", 4, 6)
    assert not refine_shapes(b.graph)


def test_symbols_that_do_not_cancel_or_match_are_left_alone():
    """-1 against an input whose symbol the other dims do not hold stays unknown; a broadcast of
    two different symbols (or an anonymous "?") is not either of them."""
    b = Builder()
    x = b.input("x", (2, 6))
    y = b.input("y", (2, 6))
    r = b.op("Reshape", x, b.op("Concat", b.const([3], dtype="int64"), b.const([-1], dtype="int64"), axis=0))
    s = b.op("Add", x, y)
    t = b.op("Add", x, b.input("z", (2, 6)))
    b.output(r, s, t)
    x.shape, y.shape, t.producer().inputs[1].shape = ("B", 6), ("C", 6), ("?", 6)
    r.shape, s.shape, t.shape = (3, "n"), ("u", 6), ("w", 6)
    assert not check_pass(refine_shapes, b)
    assert r.shape == (3, "n") and s.shape == ("u", 6) and t.shape == ("w", 6)


def test_a_mask_expanded_to_a_computed_shape_keeps_the_batch():
    """Hugging Face's mask: Range(0, batch, 1) is the batch's rows, and Expand's target is
    Where(Equal(t, -1), ones, t) of t = Concat(batch, 1, 4, 4), the exporters' expand(-1): its
    entries are the batch symbol and 1, 4, 4. The mask then broadcasts with the scores as
    [B, 1, 4, 4] and the scores keep B."""
    b = Builder()
    x = b.input("x", (2, 4))
    scores = b.input("scores", (2, 3, 4, 4))
    n = b.op("Gather", b.op("Shape", x), b.const(0, dtype="int64"), axis=0)
    rows = b.op("Range", b.const(0, dtype="int64"), n, b.const(1, dtype="int64"))
    cast = b.op("Cast", rows, to=1)
    grid = b.op("Unsqueeze", cast, b.const([1, 2, 3], dtype="int64"))
    t = b.op("Concat", b.op("Unsqueeze", n, b.const([0], dtype="int64")), b.const([1, 4, 4], dtype="int64"), axis=0)
    minus = b.op("Equal", t, b.const([-1, -1, -1, -1], dtype="int64"))
    target = b.op("Where", minus, b.const([1, 1, 1, 1], dtype="int64"), t)
    mask = b.op("Expand", grid, target)
    out = b.op("Add", scores, mask)
    b.output(out)
    x.shape, scores.shape = ("B", 4), ("B", 3, 4, 4)
    rows.shape, cast.shape, grid.shape = ("r",), ("r",), ("r", 1, 1, 1)
    mask.shape, out.shape = ("m0", "m1", "m2", "m3"), ("o", 3, 4, 4)
    assert check_pass(refine_shapes, b)
    assert rows.shape == ("B",) and grid.shape == ("B", 1, 1, 1)
    assert mask.shape == ("B", 1, 4, 4) and out.shape == ("B", 3, 4, 4)


def test_reductions_and_flatten_carry_the_batch():
    """MiniLM's pooling: ReduceSum over the tokens (keepdims 0) is [B, 384], ReduceL2 with
    keepdims [B, 1]; Flatten keeps a lone symbol, and a product of a symbol and an int is
    unknown."""
    b = Builder()
    x = b.input("x", (2, 4, 6))
    pooled = b.op("ReduceSum", x, b.const([1], dtype="int64"), keepdims=0)
    norm = b.op("ReduceL2", pooled, b.const([-1], dtype="int64"), keepdims=1)
    flat = b.op("Flatten", x, axis=1)
    rows = b.op("Flatten", x, axis=2)
    b.output(b.op("Div", pooled, norm), flat, rows)
    x.shape = ("B", 4, 6)
    pooled.shape, norm.shape, flat.shape, rows.shape = ("u", 6), ("v", "w"), ("p", "q"), ("r", 6)
    assert check_pass(refine_shapes, b)
    assert pooled.shape == ("B", 6) and norm.shape == ("B", 1) and flat.shape == ("B", 24) and rows.shape == ("r", 6)


def test_a_float_range_is_not_read_as_a_shape():
    """Range(0, 5.5, 1) has 6 elements: float scalars are not dims (const_ints would truncate)."""
    b = Builder()
    r = b.op("Range", b.const(0.0), b.const(5.5), b.const(1.0))
    b.output(r)
    r.shape = ("n",)
    refine_shapes(b.graph)
    assert r.shape == ("n",)


def test_position_ids_cut_to_a_bounded_sequence():
    """position_ids[:, :seq] (Slice(0, Gather(Shape(x), 1)) of a [1, 8] table) is seq long where the
    profiles keep seq within the table (graph.dim_bounds); without that bound it stays unknown."""
    for bounds, want in (({"S": (1, 8)}, (1, "S")), ({"S": (1, 9)}, (1, "n")), ({}, (1, "n"))):
        b = Builder()
        x = b.input("x", (2, 6))
        table = b.input("table", (1, 8))
        seq = b.op("Unsqueeze", b.op("Gather", b.op("Shape", x), b.const(1, dtype="int64"), axis=0),
                   b.const([0], dtype="int64"))
        cut = b.op("Slice", table, b.const([0], dtype="int64"), seq, b.const([1], dtype="int64"))
        b.output(cut)
        x.shape, table.shape, cut.shape = ("B", "S"), (1, 8), ("u", "n")
        b.graph.dim_bounds = bounds
        refine_shapes(b.graph)
        assert cut.shape == want, (bounds, cut.shape)


def test_reshape_targets_read_from_shape_slices_and_gathers():
    """Reshape targets taken from part of a shape: Shape(x, end=1), Slice(Shape(x), 0, 1) and
    Gather(Shape(x), [0, 1]) hold x's leading dims, symbols included, so the Reshape's -1 is
    fixed with B cancelled; the same dims fold to constants where they are static."""
    b = Builder()
    x = b.input("x", (2, 3, 8))
    first = b.op("Shape", x, end=1)
    sliced = b.op("Slice", b.op("Shape", x), b.const([0], dtype="int64"), b.const([1], dtype="int64"))
    pair = b.op("Gather", b.op("Shape", x), b.const([0, 1], dtype="int64"), axis=0)
    r1 = b.op("Reshape", x, b.op("Concat", first, b.const([-1, 4], dtype="int64"), axis=0))
    r2 = b.op("Reshape", x, b.op("Concat", sliced, b.const([6, -1], dtype="int64"), axis=0))
    r3 = b.op("Reshape", x, b.op("Concat", pair, b.const([2, -1], dtype="int64"), axis=0))
    b.output(r1, r2, r3)
    x.shape = ("B", 3, 8)
    r1.shape, r2.shape, r3.shape = ("u1", "u2", 4), ("u3", 6, "u4"), ("u5", "u6", 2, "u7")
    assert check_pass(refine_shapes, b)
    assert r1.shape == ("B", 6, 4) and r2.shape == ("B", 6, 4) and r3.shape == ("B", 3, 2, 4)

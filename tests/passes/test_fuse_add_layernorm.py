from __future__ import annotations

from graphs import Builder, check_pass, ops
from kiln.passes.fuse_add_layernorm import fuse_add_layernorm


def _matmul_residual(b: Builder, a, r, k: int = 16, n: int = 16):
    return b.op("FusedMatMul", a, b.rand(k, n), b.rand(n, name="bias"), r, domain="kiln", trans_b=0, alpha=1.0,
                activation="", activation_params=[])


def _ln(b: Builder, x, n: int = 16):
    return b.op("LayerNormalization", x, b.rand(n, name="gamma"), b.rand(n, name="beta"), axis=-1, epsilon=1e-5)


def test_post_norm_gemm_gives_up_its_residual():
    # BERT: LayerNorm(x @ W + b + r) and the sum is read by nothing else.
    b = Builder()
    a, r = b.input("a", (2, 3, 16)), b.input("r", (2, 3, 16))
    g = b.output(_ln(b, _matmul_residual(b, a, r)))
    assert check_pass(fuse_add_layernorm, b, rtol=1e-4, atol=1e-5)
    assert ops(g) == {"kiln::FusedMatMul": 1, "kiln::AddLayerNorm": 1}
    mm, fused = g.nodes
    assert len(mm.inputs) == 3 and mm.input(2) is not None          # bias kept, residual gone
    assert fused.inputs[:2] == (mm.outputs[0], r) and len(fused.outputs) == 1
    assert fused.attrs == {"axis": -1, "epsilon": 1e-5}


def test_pre_norm_add_keeps_the_sum_for_the_residual_stream():
    # ViT: s = x + r feeds both LayerNorm and the next residual add.
    b = Builder()
    x, r = b.input("x", (2, 4, 16)), b.input("r", (2, 4, 16))
    s = b.op("Add", x, r)
    y = _ln(b, s)
    g = b.output(b.op("Add", b.op("Relu", y), s))
    assert check_pass(fuse_add_layernorm, b, rtol=1e-4, atol=1e-5)
    fused = next(n for n in g.nodes if n.op == "AddLayerNorm")
    assert ops(g) == {"kiln::AddLayerNorm": 1, "Relu": 1, "Add": 1}
    assert fused.inputs[:2] == (x, r) and fused.outputs == [y, s]
    assert [n.op for n in g.nodes].index("AddLayerNorm") == 0


def test_sum_that_is_a_graph_output_is_kept():
    b = Builder()
    a, r = b.input("a", (3, 16)), b.input("r", (3, 16))
    s = _matmul_residual(b, a, r)
    y = _ln(b, s)
    g = b.output(y, s)
    assert check_pass(fuse_add_layernorm, b, rtol=1e-4, atol=1e-5)
    fused = next(n for n in g.nodes if n.op == "AddLayerNorm")
    assert fused.outputs == [y, s] and g.outputs == [y, s]


def test_not_fused_when_shapes_differ_or_statistics_are_read():
    b = Builder()
    x, r = b.input("x", (2, 16)), b.input("r", (1, 16))            # broadcast add
    b.output(_ln(b, b.op("Add", x, r)))
    assert not check_pass(fuse_add_layernorm, b)

    b = Builder()
    a, r = b.input("a", (2, 16)), b.input("r", (2, 16))
    s = b.op("FusedMatMul", a, b.rand(16, 16), None, r, domain="kiln", trans_b=0, alpha=1.0, activation="Relu",
             activation_params=[])                                  # the activation follows the residual
    b.output(_ln(b, s))
    assert not check_pass(fuse_add_layernorm, b)

    b = Builder()
    x, r = b.input("x", (2, 16)), b.input("r", (2, 16))
    y, mean, inv = b.op("LayerNormalization", b.op("Add", x, r), b.rand(16), n_outputs=3, axis=-1)
    g = b.output(y, mean)
    assert not check_pass(fuse_add_layernorm, b)
    assert "kiln::AddLayerNorm" not in ops(g)


def test_symbolic_dims_match_by_name():
    b = Builder()
    a, r = b.input("a", (2, 3, 16)), b.input("r", (2, 3, 16))
    s = _matmul_residual(b, a, r)
    g = b.output(_ln(b, s))
    for v in (a, r, s, g.outputs[0]):
        v.shape = ("batch", 3, 16)
    assert check_pass(fuse_add_layernorm, b, rtol=1e-4, atol=1e-5)
    assert "kiln::AddLayerNorm" in ops(g)

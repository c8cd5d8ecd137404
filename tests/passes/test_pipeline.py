from __future__ import annotations

import math

from graphs import Builder, check_pass, ops
from kiln.passes.pipeline import PASSES, optimize


def _block(b: Builder):
    """A tiny transformer block plus a conv stem, written out as exporters do."""
    x = b.input("x", (2, 4, 16))
    h = b.op("Identity", x)
    ax = b.const([-1], dtype="int64")
    d = b.op("Sub", h, b.op("ReduceMean", h, ax))
    var = b.op("ReduceMean", b.op("Pow", d, b.const(2.0)), ax)
    n = b.op("Div", d, b.op("Sqrt", b.op("Add", var, b.const(1e-5))))
    n = b.op("Add", b.op("Mul", n, b.rand(16)), b.rand(16))
    heads = b.const([2, 4, 2, 8], dtype="int64")
    def proj():
        t = b.op("Add", b.op("MatMul", n, b.rand(16, 16)), b.rand(16))
        return b.op("Transpose", b.op("Reshape", t, heads), perm=[0, 2, 1, 3])
    q, k, v = proj(), proj(), proj()
    s = b.op("Div", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), b.const(math.sqrt(8)))
    a = b.op("MatMul", b.op("Softmax", s, axis=-1), v)
    a = b.op("Reshape", b.op("Transpose", a, perm=[0, 2, 1, 3]), b.const([2, 4, 16], dtype="int64"))
    h = b.op("Add", b.op("Add", b.op("MatMul", a, b.rand(16, 16)), b.rand(16)), x)
    u = b.op("Add", b.op("MatMul", h, b.rand(16, 32)), b.rand(32))
    p = b.op("Add", b.op("Erf", b.op("Div", u, b.const(1.4142135))), b.const(1.0))
    u = b.op("Mul", b.op("Mul", u, p), b.const(0.5))
    y = b.op("Mul", b.op("Sigmoid", b.op("MatMul", u, b.rand(32, 16))), b.const(2.0))
    y = b.op("Sub", b.op("Exp", y), b.op("Mul", b.const([1.0]), b.const(3.0)))
    img = b.input("img", (1, 3, 8, 8))
    c = b.op("Conv", img, b.rand(4, 3, 3, 3), pads=[1, 1, 1, 1])
    c = b.op("BatchNormalization", c, b.rand(4), b.rand(4), b.rand(4), b.rand(4, positive=True))
    c = b.op("Relu", c)
    return b.output(y, c)


def test_pipeline_fuses_a_block(tmp_path):
    b = Builder()
    _block(b)
    seen = []
    runs = []
    assert not check_pass(lambda g: runs.extend(optimize(g, dump_dir=tmp_path, on_pass=lambda n, c: seen.append(n)))
                          or False, b, rtol=1e-4, atol=1e-5)
    assert [name for name, _ in runs] == seen
    changed = {name for name, c in runs if c}
    assert {"fold_constants", "eliminate_noops", "fold_batchnorm", "fuse_layernorm", "fuse_gelu",
            "fuse_attention", "fuse_epilogues", "merge_parallel_matmuls", "fuse_pointwise"} <= changed
    # Q, K and V: one merged GEMM and a Split
    assert ops(b.graph) == {"LayerNormalization": 1, "kiln::FusedMatMul": 4, "Split": 1, "Reshape": 4, "Transpose": 4,
                            "kiln::Attention": 1, "kiln::Pointwise": 1, "kiln::FusedConv": 1}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "00_imported.txt" and len(files) == len(runs) + 1
    assert files[-1] == f"{len(runs):02d}_eliminate_dead_code.txt"


def test_pass_table_shape():
    names = [n for n, _ in PASSES]
    assert names[:4] == ["fold_constants", "eliminate_noops", "eliminate_dead_code", "refine_shapes"]
    assert names.index("fuse_attention") < names.index("fuse_epilogues") < names.index("fuse_pointwise")


def test_fused_nodes_remember_their_source_nodes():
    from kiln.ir import Graph
    from kiln.ir import dtypes
    from kiln.passes.fuse_gelu import fuse_gelu
    import numpy as np

    g = Graph("gelu")
    x = g.value("x", dtypes.FLOAT32, (2, 3))
    g.inputs.append(x)
    d = g.make_node("Div", [x, g.constant(np.float32(np.sqrt(2.0)))], name="div").outputs[0]
    e = g.make_node("Erf", [d], name="erf").outputs[0]
    a = g.make_node("Add", [e, g.constant(np.float32(1.0))], name="add").outputs[0]
    m = g.make_node("Mul", [x, a], name="mul").outputs[0]
    h = g.make_node("Mul", [m, g.constant(np.float32(0.5))], name="half").outputs[0]
    g.outputs.append(h)
    assert fuse_gelu(g)
    (node,) = g.nodes
    assert node.op == "Gelu"
    assert sorted(node.fused_from) == ["add", "div", "erf", "half", "mul"]

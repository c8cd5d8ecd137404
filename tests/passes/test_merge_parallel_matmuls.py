from __future__ import annotations

import numpy as np

from graphs import Builder, check_pass, ops
from kiln.passes.merge_parallel_matmuls import merge_parallel_matmuls


def _fused(b: Builder, a, n: int, bias: bool = True, activation: str = "", residual=None):
    return b.op("FusedMatMul", a, b.rand(16, n), b.rand(n, name="bias") if bias else None, residual, domain="kiln",
                trans_b=0, alpha=1.0, activation=activation, activation_params=[])


def test_qkv_projections_become_one_gemm_and_a_split():
    b = Builder()
    x = b.input("x", (2, 5, 16))
    q, k, v = _fused(b, x, 8), _fused(b, x, 8, bias=False), b.op("MatMul", x, b.rand(16, 4))
    g = b.output(b.op("Relu", q), k, v)
    weights = [n.input(1).const for n in g.nodes if n.op in ("FusedMatMul", "MatMul")]
    assert check_pass(merge_parallel_matmuls, b, rtol=1e-5, atol=1e-5)
    assert ops(g) == {"kiln::FusedMatMul": 1, "Split": 1, "Relu": 1}
    mm, split = g.nodes[0], g.nodes[1]
    assert mm.input(0) is x and mm.input(1).shape == (16, 20)
    np.testing.assert_array_equal(np.asarray(mm.input(1).const), np.concatenate([np.asarray(w) for w in weights], 1))
    assert np.asarray(mm.input(2).const)[8:].tolist() == [0.0] * 12       # K and V had no bias
    assert split.outputs == [q, k, v] and split.input(0) is mm.outputs[0]
    assert np.asarray(split.input(1).const).tolist() == [8, 8, 4] and split.attrs == {"axis": -1}


def test_only_compatible_members_merge():
    b = Builder()
    x = b.input("x", (3, 16))
    r = b.input("r", (3, 8))
    a = _fused(b, x, 8, activation="Relu")
    c = _fused(b, x, 8, activation="Relu")
    d = _fused(b, x, 8)                                   # another activation: its own group (of one)
    e = _fused(b, x, 8, residual=r)                       # a residual: never merged
    g = b.output(a, c, d, e)
    assert check_pass(merge_parallel_matmuls, b, rtol=1e-5, atol=1e-5)
    assert ops(g) == {"kiln::FusedMatMul": 3, "Split": 1}
    merged = next(n for n in g.nodes if n.op == "FusedMatMul" and n.input(1).shape == (16, 16))
    assert merged.attrs["activation"] == "Relu"


def test_nothing_to_merge():
    b = Builder()
    x = b.input("x", (3, 16))
    w = b.input("w", (16, 8))
    b.output(_fused(b, x, 8), b.op("MatMul", x, w))        # a runtime weight cannot be concatenated
    assert not check_pass(merge_parallel_matmuls, b)

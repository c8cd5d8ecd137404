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


def _qmatmul(b: Builder, a, a_scale, n: int, w_scale, bias: bool = True, out=None, trans_b: int = 0,
             mid=None, mid_type: str = "int8"):
    """A kiln::QMatMul over int8 codes `a` (zero point absent), weight codes [16, n]; `mid`: its
    (mid_scale, mid_zp), the product rounded to those codes before the bias."""
    w = b.const(b.rng.integers(-127, 128, (n, 16) if trans_b else (16, n)), "w_q", dtype="int8")
    out_scale, out_zp = (None, None) if out is None else (b.const(out[0]), b.const(out[1], dtype="int8"))
    mids = () if mid is None else (b.const(mid[0]), b.const(mid[1], dtype=mid_type))
    return b.op("QMatMul", a, w, a_scale, None, b.const(w_scale), None, b.rand(n, name="bias") if bias else None,
                None, out_scale, out_zp, *mids, domain="kiln", trans_b=trans_b, activation="", activation_params=[],
                out_dtype=0 if out is None else 3)


def test_quantized_projections_merge_column_exactly():
    """A QAT export's Q/K/V (kiln::QMatMul over the same codes): one QMatMul whose per-column weight
    scales, biases and output scales are the members', so every column is bit for bit its member's."""
    b = Builder()
    a = b.input("a", (2, 5, 16), "int8", data=b.rng.integers(-128, 128, (2, 5, 16)).astype(np.int8))
    s = b.const(0.05)
    q = _qmatmul(b, a, s, 8, b.rng.uniform(0.01, 0.02, 8).astype(np.float32))      # per-channel weight scales
    k = _qmatmul(b, a, s, 8, 0.015, bias=False)                                    # per tensor, no bias
    v = _qmatmul(b, a, b.const(0.05), 4, 0.02)                                     # an equal a_scale constant
    g = b.output(q, k, v)
    assert check_pass(merge_parallel_matmuls, b, rtol=0, atol=0)
    assert ops(g) == {"kiln::QMatMul": 1, "Split": 1}
    mm = g.nodes[0]
    assert mm.input(1).shape == (16, 20) and mm.input(1).dtype.name == "int8"
    scales = np.asarray(mm.input(4).const)
    assert scales.shape == (20,) and scales[8:16].tolist() == [np.float32(0.015)] * 8
    assert np.asarray(mm.input(6).const)[8:16].tolist() == [0.0] * 8

    b = Builder()                         # requantized members: per-column output scales and zero points
    a = b.input("a", (3, 16), "int8", data=b.rng.integers(-128, 128, (3, 16)).astype(np.int8))
    s = b.const(0.05)
    g = b.output(_qmatmul(b, a, s, 8, 0.01, out=(0.2, 3)), _qmatmul(b, a, s, 8, 0.01, out=(0.1, -2)))
    assert check_pass(merge_parallel_matmuls, b, rtol=0, atol=0)
    assert ops(g) == {"kiln::QMatMul": 1, "Split": 1}
    assert np.asarray(g.nodes[0].input(9).const).tolist() == [3] * 8 + [-2] * 8


def test_quantized_members_that_differ_stay_apart():
    b = Builder()
    a = b.input("a", (3, 16), "int8", data=b.rng.integers(-128, 128, (3, 16)).astype(np.int8))
    s = b.const(0.05)
    float_out = _qmatmul(b, a, s, 8, 0.01)
    requantized = _qmatmul(b, a, s, 8, 0.01, out=(0.2, 0))        # another output type
    other_scale = _qmatmul(b, a, b.const(0.04), 8, 0.01)          # A read with another scale
    transposed = _qmatmul(b, a, s, 8, 0.01, trans_b=1)             # trans_b: never merged
    g = b.output(float_out, requantized, other_scale, transposed)
    assert not check_pass(merge_parallel_matmuls, b)
    assert ops(g) == {"kiln::QMatMul": 4}


def test_projections_with_their_own_mid_quantization_merge():
    """ONNX Runtime's QDQ Q/K/V (fuse_qdq_bias: each product rounded to its own codes before the
    bias) merge into one kiln::QMatMul whose mid scales and zero points are per column, every
    column bit for bit its member's; members with and without a mid quantization, or with another
    mid zero-point type, stay apart."""
    b = Builder()
    a = b.input("a", (3, 16), "int8", data=b.rng.integers(-128, 128, (3, 16)).astype(np.int8))
    s = b.const(0.05)
    g = b.output(*(_qmatmul(b, a, s, n, 0.01, out=(0.2, 1), mid=mid)
                   for n, mid in ((8, (0.04, 3)), (8, (0.03, -5)), (4, (0.05, 0)))))
    assert check_pass(merge_parallel_matmuls, b, rtol=0, atol=0)
    assert ops(g) == {"kiln::QMatMul": 1, "Split": 1}
    mm = g.nodes[0]
    np.testing.assert_allclose(np.asarray(mm.input(10).const), [0.04] * 8 + [0.03] * 8 + [0.05] * 4, rtol=1e-6)
    assert np.asarray(mm.input(11).const).tolist() == [3] * 8 + [-5] * 8 + [0] * 4
    assert mm.input(11).dtype.name == "int8"

    b = Builder()
    a = b.input("a", (3, 16), "int8", data=b.rng.integers(-128, 128, (3, 16)).astype(np.int8))
    s = b.const(0.05)
    g = b.output(_qmatmul(b, a, s, 8, 0.01, out=(0.2, 1), mid=(0.04, 3)), _qmatmul(b, a, s, 8, 0.01, out=(0.2, 1)),
                 _qmatmul(b, a, s, 8, 0.01, out=(0.2, 1), mid=(0.04, 131), mid_type="uint8"))
    assert not check_pass(merge_parallel_matmuls, b)
    assert ops(g) == {"kiln::QMatMul": 3}


def test_uint8_weights_merge_with_their_zero_points():
    """uint8 weight codes (ONNX Runtime's QUInt8 weights) with a zero point each, or none: one
    QMatMul whose per-column zero points are the members' (0 for the one without), exactly."""
    b = Builder()
    a = b.input("a", (3, 16), "uint8", data=b.rng.integers(0, 256, (3, 16)).astype(np.uint8))
    s, a_zp = b.const(0.05), b.const(131, dtype="uint8")

    def member(n: int, zp):
        w = b.const(b.rng.integers(0, 256, (16, n)), "w_q", dtype="uint8")
        return b.op("QMatMul", a, w, s, a_zp, b.const(0.01), None if zp is None else b.const(zp, dtype="uint8"),
                    b.rand(n, name="bias"), domain="kiln", trans_b=0, activation="", activation_params=[],
                    out_dtype=0)
    g = b.output(member(8, 120), member(4, None), member(8, 140))
    assert check_pass(merge_parallel_matmuls, b, rtol=0, atol=0)
    assert ops(g) == {"kiln::QMatMul": 1, "Split": 1}
    mm = g.nodes[0]
    assert mm.input(1).dtype.name == "uint8" and mm.input(5).dtype.name == "uint8"
    assert np.asarray(mm.input(5).const).tolist() == [120] * 8 + [0] * 4 + [140] * 8

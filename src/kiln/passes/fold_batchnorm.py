"""Fold inference-mode BatchNormalization into the layer before it, or into Mul+Add.

With s = gamma / sqrt(var + eps) and t = beta - mean * s (all per channel c):
  BN(Conv(x, W, b))           -> Conv(x, W * s[c, None, ...], (b - mean) * s + beta)
  BN(Gemm(x, W, C, alpha, beta_g)), 2-D -> Gemm(x, W * s (per output column), (beta_g*C - mean) * s + beta, beta=1)
  BN(MatMul(x, W)), 2-D       -> Add(MatMul(x, W * s[None, :]), t)
  BN(x), any other             -> Add(Mul(x, s[:, None, ...]), t[:, None, ...])
The first three need constant weights and a layer output read only by the BN; the
last one needs the rank of x, and its Mul/Add are left for fuse_pointwise.
An explicitly quantized layer (its input a DequantizeLinear: a QAT export's Conv(DQ(x), DQ(w))
-> BN, the constant DQ(w) already folded to W) keeps its weight an exact dequantization, as
TensorRT folds BN into Q/DQ weights: where W = DQ(q, sc) exactly (int8 codes, or float8 under a
float8 input: passes/quantized_weights.py), BN's scale goes into sc (|sc * s| rounded to float32
once, q negated where s < 0) and the weight is rebuilt from its codes, so fuse_qdq still finds q;
the product W * s rounded per element would not be one.
Run fold_constants first so that weights computed from constants are constants.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node
from kiln.passes.quantized_weights import recover_codes
from kiln.passes.match import const_array, new_const, pinned, produced_by, rank, replace_nodes, sole_user


def fold_batchnorm(graph: Graph) -> bool:
    """Fold every BatchNormalization with constant statistics (see module docstring)."""
    changed = False
    keep = pinned(graph)
    for bn in [n for n in graph.nodes if n.domain == "" and n.op == "BatchNormalization"]:
        stats = _scale_shift(bn)
        if stats is None or any(o.uses() or id(o) in keep for o in bn.outputs[1:]):
            continue
        x = bn.input(0)
        layer = produced_by(x, "Conv", "Gemm", "MatMul")
        if layer is not None and sole_user(x, keep) is bn and _fold_into(graph, layer, bn, stats):
            changed = True
        elif rank(x) is not None and rank(x) >= 2:
            _to_mul_add(graph, bn, stats)
            changed = True
    return changed


def _scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) in float64 with BN(x) = x * s + t per channel; None unless foldable."""
    if bn.attrs.get("training_mode", 0):
        return None
    arrays = [const_array(bn.input(i)) for i in range(1, 5)]
    if any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64).reshape(-1) for a in arrays)
    s = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return s, beta - mean * s


def _fold_into(graph: Graph, layer: Node, bn: Node, stats: tuple[np.ndarray, np.ndarray]) -> bool:
    s, t = stats
    w_val = layer.input(1)
    w = const_array(w_val)
    if w is None:
        return False
    if layer.op == "Conv":
        bias = const_array(layer.input(2)) if layer.input(2) is not None else np.zeros(len(s))
        if bias is None or w.shape[0] != len(s):
            return False
        new_w = _scaled_weight(layer, w, s, 0)
        inputs = [layer.input(0), new_const(graph, new_w, w_val.const, "bn_weight"),
                  new_const(graph, bias.astype(np.float64) * s + t, w_val.const, "bn_bias")]
        replace_nodes(graph, [layer, bn], "Conv", inputs, layer.attrs)
        return True
    if rank(layer.outputs[0]) != 2 or w.ndim != 2:
        return False  # BN's channel axis is 1: the per-column rule holds for 2-D only
    trans_b = layer.op == "Gemm" and layer.attrs.get("transB", 0)
    if (w.shape[0] if trans_b else w.shape[1]) != len(s):
        return False
    new_w = _scaled_weight(layer, w, s, 0 if trans_b else 1)
    w_new = new_const(graph, new_w, w_val.const, "bn_weight")
    if layer.op == "MatMul":
        matmul = graph.make_node("MatMul", [layer.input(0), w_new], before=layer)
        matmul.outputs[0].dtype, matmul.outputs[0].shape = layer.outputs[0].dtype, layer.outputs[0].shape
        replace_nodes(graph, [layer, bn], "Add", [matmul.outputs[0], new_const(graph, t, w_val.const, "bn_shift")], {})
        return True
    c = const_array(layer.input(2)) if layer.input(2) is not None else np.zeros(len(s))
    if c is None:
        return False
    new_c = float(layer.attrs.get("beta", 1.0)) * c.astype(np.float64) * s + t
    attrs = dict(layer.attrs, beta=1.0)
    replace_nodes(graph, [layer, bn], "Gemm", [layer.input(0), w_new, new_const(graph, new_c, w_val.const, "bn_bias")], attrs)
    return True


def _scaled_weight(layer: Node, w: np.ndarray, s: np.ndarray, axis: int) -> np.ndarray:
    """W times s along its output-channel axis, in float64; for an explicitly quantized layer whose
    W is an exact int8 (or, under a float8 input, float8) dequantization, the one with scales
    |sc * s| (module docstring)."""
    shape = [1] * w.ndim
    shape[axis] = -1
    dq = produced_by(layer.input(0), "DequantizeLinear")
    if dq is not None and w.dtype == np.float32:
        fp8 = dq.input(0).dtype is not None and dq.input(0).dtype.name == "float8_e4m3fn"
        found = recover_codes(w, axis, fp8)
        if found is not None:
            codes, sc = found
            sign = np.where(s < 0, -1.0, 1.0).reshape(shape)
            scale = (sc.astype(np.float64) * np.abs(s)).astype(np.float32).astype(np.float64).reshape(shape)
            return codes * sign * scale   # exact in float64: fl32 of it is DQ(q, scale)
    return w.astype(np.float64) * s.reshape(shape)


def _to_mul_add(graph: Graph, bn: Node, stats: tuple[np.ndarray, np.ndarray]) -> None:
    s, t = stats
    x = bn.input(0)
    like = bn.input(1).const
    channel = (-1,) + (1,) * (rank(x) - 2)  # [C, 1, ...] broadcasts over [N, C, ...]
    mul = graph.make_node("Mul", [x, new_const(graph, s.reshape(channel), like, "bn_scale")], before=bn)
    mul.outputs[0].dtype, mul.outputs[0].shape = bn.outputs[0].dtype, bn.outputs[0].shape
    replace_nodes(graph, [bn], "Add", [mul.outputs[0], new_const(graph, t.reshape(channel), like, "bn_shift")], {})

"""Turn explicit quantization (QDQ: QuantizeLinear/DequantizeLinear pairs) into quantized layers.

Rules, in the order they run (DQ = DequantizeLinear, Q = QuantizeLinear, p = the same
constant per-tensor scale and zero point, S a shape op: Reshape, Transpose, Flatten,
Squeeze, Unsqueeze, or MaxPool without Indices):

  Q(S(DQ(x, p)), p)                  -> S(x)       S only moves or picks elements, and
  Q(DQ(x, p), p)                     -> x          Q(DQ(x, p), p) = x exactly
  [Q](act(DQ(a) @ DQ(w) + c + r))    -> kiln::QMatMul(a, w, scales, zero points, c, r, ...)
  [Q](act(Conv(DQ(x), DQ(w)) + ...)) -> kiln::QConv(x, w, ...)
  (Gemm with transA=0 and alpha=1 counts as MatMul, transB as trans_b, beta*C as bias)

- Activations (a, x) must be int8/uint8, or float8_e4m3fn (FP8 explicit quantization, as
  ModelOpt exports it for TensorRT), with a constant per-tensor scale and zero point; a MatMul's
  may also be DynamicQuantizeLinear's codes by its own scale and zero point (ONNX Runtime's
  dynamic quantization, passes/integer_to_qdq.py): the QMatMul then reads them on the
  device at run time (attribute dynamic=1).
  Weights are a constant of the same kind (int8/uint8 under int8/uint8 activations, float8
  under float8) with a constant scale and zero point, per tensor or per output channel (DQ's
  axis on W's output axis: MatMul 1, Gemm 0 if transB else 1, Conv 0). A float8 zero point
  must be 0 and is dropped (the quantized ops take none for float8). Anything else (other runtime
  scales, per-channel activations, blocked scales, mixed int8 and float8) is left unchanged.
- fold_constants runs first in the pipeline and turns DQ(w_q) into a float constant W.
  Such a W is accepted when it is *exactly* a dequantization of the activation's kind,
  W = fl32(q * s_c) per output channel (passes/quantized_weights.py: the search, every element
  checked), so the fused layer's DQ(q, s) is W bit for bit.
- The epilogue (constant per-channel bias c, a residual r of the output's shape, one
  activation) is matched as fuse_epilogues does (a Conv's residual DQ(r_q), per tensor, is
  read as r_q with its scale and zero point: QConv dequantizes it in the epilogue); a
  trailing Q with constant per-tensor parameters (saturating, to an 8-bit integer or float8
  type) becomes the output requantization (out_scale, out_zp, out_dtype). An intermediate is absorbed only when
  the next step is its sole reader and not a graph output.
- DQ(Q(x)) pairs that no quantized layer consumes are kept: they simulate quantization
  of a float tensor, and removing them would change the numbers. A DQ whose readers are
  all fused away is removed; one that still has float readers stays for them.
Run after fold_batchnorm and fuse_gelu (weights final, Gelu one node), before
fuse_epilogues, which would take the float layer and hide the DQ -> layer -> Q pattern.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.fuse_epilogues import Epilogue, bias_value, channel_vector, collect_epilogue, gemm_start
from kiln.passes.quantized_weights import recover_fp8, recover_int8
from kiln.passes.match import (bypass, const_array, drop_if_dead, live_nodes, pinned, produced_by, rank,
                               replace_nodes, sole_user)

SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool")
# Input types whose products and sums float64 holds exactly (kernels/reference/quantized.py).
QUANT_INPUTS = dtypes.CODE_NAMES
FP8 = "float8_e4m3fn"
LAYER_INPUTS = (*QUANT_INPUTS, FP8)   # the codes a quantized layer reads (QUANT_INPUTS: the integer ones)
QUANT_OUTPUTS = ("int8", "uint8", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
FLOAT8 = QUANT_OUTPUTS[2:]


@dataclass(frozen=True, slots=True)
class QParams:
    """A Q/DQ node's constant scale and zero point; `channels` 1 means per tensor."""
    scale: Value
    zero_point: Value | None
    channels: int
    axis: int


def fuse_qdq(graph: Graph) -> bool:
    """Drop float8 zero points of 0 and redundant Q/DQ around shape ops, then fuse DQ -> layer -> [Q]
    into QMatMul/QConv."""
    changed = False
    for node in live_nodes(graph, "QuantizeLinear", "DequantizeLinear"):
        changed |= _drop_float8_zero_point(node)
    keep = pinned(graph)
    for q in live_nodes(graph, "QuantizeLinear"):
        changed |= _sink_shape_op(graph, q, keep)
    keep = pinned(graph)
    for node in live_nodes(graph, "MatMul", "Gemm", "Conv"):
        changed |= _fuse_layer(graph, node, keep)
    return changed


def qparams(node: Node | None) -> QParams | None:
    if node is None or node.attrs.get("block_size", 0) or node.input(1) is None:
        return None
    scale, zp = node.input(1), node.input(2)
    s, z = const_array(scale), const_array(zp)
    if s is None or (zp is not None and (z is None or z.size != s.size)):
        return None
    if s.size == 1:
        return QParams(scale, zp, 1, 0)
    r = rank(node.input(0))
    if s.ndim != 1 or r is None:
        return None
    return QParams(scale, zp, s.size, int(node.attrs.get("axis", 1)) % r)


def _dtype(v: Value | None) -> str | None:
    return None if v is None or v.dtype is None else v.dtype.name


def same_params(p: QParams, q: QParams) -> bool:
    """Both per tensor with equal scale and zero point (an omitted zero point is 0)."""
    if p.channels != 1 or q.channels != 1:
        return False
    zp = [0.0 if v is None else float(const_array(v).reshape(-1)[0]) for v in (p.zero_point, q.zero_point)]
    return float(const_array(p.scale).reshape(-1)[0]) == float(const_array(q.scale).reshape(-1)[0]) \
        and zp[0] == zp[1] and _dtype(p.scale) == _dtype(q.scale)


def _sink_shape_op(graph: Graph, q: Node, keep: set[int]) -> bool:
    """Q(S(DQ(x, p)), p) -> S(x) and Q(DQ(x, p), p) -> x."""
    src = q.input(0)
    shape_op = produced_by(src, *SHAPE_OPS)
    if shape_op is not None:
        if sole_user(src, keep) is not q or any(o.uses() or id(o) in keep for o in shape_op.outputs[1:]):
            return False
        dq = produced_by(shape_op.input(0), "DequantizeLinear")
    else:
        dq = produced_by(src, "DequantizeLinear")
    pq, pdq = qparams(q), qparams(dq)
    if pq is None or pdq is None or not same_params(pq, pdq) or _dtype(dq.input(0)) != _dtype(q.outputs[0]):
        return False
    x_q = dq.input(0)
    if shape_op is None:
        if not bypass(graph, q, x_q, keep):
            return False
    else:
        shape_op.set_input(0, x_q)
        shape_op.outputs[0].dtype = x_q.dtype
        bypass(graph, q, shape_op.outputs[0], keep)  # cannot fail: the source has a producer, is unpinned
    drop_if_dead(graph, dq, keep)
    return True


def activation_input(v: Value | None, types: tuple[str, ...] = QUANT_INPUTS,
                     runtime: bool = False) -> tuple[Node, QParams] | None:
    """(the DequantizeLinear, its QParams) where `v` is a per-tensor dequantization of `types` codes
    (float8 codes without a zero point); with `runtime`, also DynamicQuantizeLinear's codes by that
    op's own scale and zero point, which it computes per run (runtime_params)."""
    dq = produced_by(v, "DequantizeLinear")
    p = qparams(dq) or (runtime_params(dq) if runtime else None)
    if p is None or p.channels != 1 or _dtype(dq.input(0)) not in types:
        return None
    p = _checked_float8(p, _dtype(dq.input(0)))
    return None if p is None else (dq, p)


def runtime_params(dq: Node | None) -> QParams | None:
    """QParams of a DequantizeLinear of DynamicQuantizeLinear's codes by its scale and zero point
    (ONNX Runtime's dynamic quantization: passes/integer_to_qdq.py), values of one element
    computed at run time; None for anything else."""
    dql = None if dq is None else produced_by(dq.input(0), "DynamicQuantizeLinear")
    if dql is None or len(dql.outputs) < 3 or dq.input(1) is not dql.outputs[1] or dq.input(2) is not dql.outputs[2] \
            or dq.attrs.get("block_size", 0):
        return None
    return QParams(dq.input(1), dq.input(2), 1, 0)


def _checked_float8(p: QParams, codes: str | None) -> QParams | None:
    """p, or None where float8 codes still have a zero point (one that is not 0:
    _drop_float8_zero_point removed the zeros), which the quantized ops do not take."""
    return None if codes in FLOAT8 and p.zero_point is not None else p


def _drop_float8_zero_point(node: Node) -> bool:
    """A float8 QuantizeLinear/DequantizeLinear's constant zero point of 0 removed: the same op
    (float8 has no zero point; a QuantizeLinear then names its type in output_dtype), and the
    form every fused kernel takes."""
    zp = node.input(2)
    z = const_array(zp) if zp is not None else None
    if z is None or _dtype(zp) not in FLOAT8 or np.any(z.astype(np.float64) != 0):
        return False
    if node.op == "QuantizeLinear":
        node.attrs["output_dtype"] = zp.dtype.onnx
    node.set_inputs(node.inputs[:2])
    return True


def _channel_axis(node: Node) -> int:
    if node.op == "Conv":
        return 0
    return 0 if node.op == "Gemm" and node.attrs.get("transB", 0) else 1


def _weight_input(graph: Graph, w: Value, axis: int, channels: int | None,
                  fp8: bool) -> tuple[list[Value | None], Node | None] | None:
    """[w_q, w_scale, w_zp] and the weight's DQ node (None when recovered from a float constant,
    which then stays for its other readers or for eliminate_dead_code); float8 codes where `fp8`
    (the activation's), else int8/uint8."""
    dq = produced_by(w, "DequantizeLinear")
    if dq is not None:
        p = qparams(dq)
        codes = _dtype(dq.input(0))
        if p is None or not dq.input(0).is_const or codes not in ((FP8,) if fp8 else QUANT_INPUTS):
            return None
        p = _checked_float8(p, codes)
        if p is None or (p.channels != 1 and (p.axis != axis or p.channels != channels)):
            return None
        return [dq.input(0), p.scale, p.zero_point], dq
    arr = const_array(w)
    if arr is None or arr.dtype != np.float32 or arr.size == 0:
        return None
    found = (recover_fp8 if fp8 else recover_int8)(arr, axis)
    if found is None:
        return None
    q, scale = found
    return [graph.constant(q, f"{w.name}_q"), graph.constant(scale, f"{w.name}_scale"), None], None


def output_quantize(v: Value, keep: set[int]) -> tuple[Node, QParams] | None:
    q = sole_user(v, keep)
    if q is None or q.domain != "" or q.op != "QuantizeLinear" or q.input(0) is not v:
        return None
    p = qparams(q)
    if p is None or p.channels != 1 or not q.attrs.get("saturate", 1) or _dtype(q.outputs[0]) not in QUANT_OUTPUTS:
        return None
    p = _checked_float8(p, _dtype(q.outputs[0]))
    return None if p is None else (q, p)


def dequantized_codes(layer: Node, keep: set[int]) -> tuple[Node, QParams] | None:
    """(the DequantizeLinear, the layer's QParams) where a kiln::QConv/QMatMul requantizes per tensor
    (a one-element constant out_scale) to int8/uint8 with no activation and its codes are read only
    by a DequantizeLinear of those same parameters (no output_dtype): the start of the Q/DQ chains
    fuse_qdq_activation (and, through mid_codes, fuse_qdq_residual and fuse_qdq_bias) fold into the
    layer."""
    out_scale, out_zp = (layer.input(QMATMUL_INPUTS.index(n)) for n in ("out_scale", "out_zp"))   # QConv's too
    scale = const_array(out_scale)
    codes = layer.outputs[0]
    if scale is None or scale.size != 1 or layer.attrs.get("activation", "") or len(layer.outputs) != 1 \
            or _dtype(codes) not in QUANT_INPUTS:
        return None
    dq = sole_user(codes, keep)
    if dq is None or dq.qualified_op != "DequantizeLinear" or dq.input(0) is not codes or \
            int(dq.attrs.get("output_dtype", 0) or 0):
        return None
    own, p = QParams(out_scale, out_zp, 1, 0), qparams(dq)
    return (dq, own) if p is not None and same_params(p, own) else None


def mid_codes(layer: Node, keep: set[int]) -> tuple[Node, QParams] | None:
    """dequantized_codes, where those codes can become the layer's mid quantization: a mid code's
    type is mid_zp's (uint8 without one), so codes of another type need their zero point. The start
    of fuse_qdq_residual's and fuse_qdq_bias's folds."""
    start = dequantized_codes(layer, keep)
    if start is None or (start[1].zero_point is None and _dtype(layer.outputs[0]) != "uint8"):
        return None
    return start


def _fuse_layer(graph: Graph, node: Node, keep: set[int]) -> bool:
    act = activation_input(node.input(0), LAYER_INPUTS, runtime=node.op != "Conv")
    w, out = node.input(1), node.outputs[0]
    if act is None or w is None or (node.op != "Conv" and rank(w) != 2):
        return False
    if node.op == "Gemm" and float(node.attrs.get("alpha", 1.0)) != 1.0:
        return False
    axis = _channel_axis(node)
    channels = w.shape[axis] if w.shape is not None and isinstance(w.shape[axis], int) else None
    if node.op == "Conv":
        b = node.input(2)
        start: Epilogue | None = Epilogue(None if b is None else
                                          (const_array(b).astype(np.float64).reshape(-1) if b.is_const else b), None)
        out_axis = 1
    else:
        start = gemm_start(node) if node.op == "Gemm" else Epilogue(None, None)
        out_axis = -1
    if start is None or channels is None:
        return False
    weight = _weight_input(graph, w, axis, channels, _dtype(act[0].input(0)) == FP8)
    if weight is None:
        return False
    ep = collect_epilogue(graph, out, start, keep, lambda c: channel_vector(c, out, out_axis, channels))
    bias = bias_value(graph, ep, out, [w, node.input(2), *(v for n in ep.nodes for v in n.inputs),
                                        act[1].scale])
    if bias is False:
        return False
    tail = ep.nodes[-1].outputs[0] if ep.nodes else out
    requant = output_quantize(tail, keep)
    dq_a, pa = act
    # QConv reads a residual DQ(r) as r and dequantizes it in its epilogue (inputs 10, 11).
    res_dq = activation_input(ep.residual, LAYER_INPUTS) if node.op == "Conv" else None
    residual = ep.residual if res_dq is None else res_dq[0].input(0)
    inputs = [dq_a.input(0), weight[0][0], pa.scale, pa.zero_point, weight[0][1], weight[0][2], bias, residual,
              None, None]
    attrs = {"activation": ep.activation, "activation_params": ep.params, "out_dtype": 0}
    if not pa.scale.is_const:   # DynamicQuantizeLinear's: the kernels read it on the device only
        attrs["dynamic"] = 1
    if requant is not None:
        inputs[8:10] = [requant[1].scale, requant[1].zero_point]
        attrs["out_dtype"] = requant[0].outputs[0].dtype.onnx
    if res_dq is not None:
        inputs += [res_dq[1].scale, res_dq[1].zero_point]
    if node.op == "Conv":
        attrs = {**node.attrs, **attrs}
    else:
        attrs["trans_b"] = int(node.attrs.get("transB", 0))
    nodes = [node, *ep.nodes, *([requant[0]] if requant is not None else [])]
    replace_nodes(graph, nodes, "QConv" if node.op == "Conv" else "QMatMul", inputs, attrs, "kiln")
    for dq in (dq_a, weight[1], res_dq[0] if res_dq is not None else None):
        if dq is not None:
            drop_if_dead(graph, dq, keep)
    return True

"""Fold an explicitly quantized residual add into the quantized conv before it.

  DQ(kiln::QConv(..., out p) -> c_q, p) + DQ(r_q, p_r) -> [Relu] -> Q(., p_y)
      ->  kiln::QConv(..., residual=r_q, residual p_r, mid p, out p_y, activation=[Relu])

ONNX Runtime's QDQ models (and QAT exports) quantize a residual block's last conv and then add the
dequantized codes to the dequantized shortcut: after fuse_qdq the block ends in a QConv that
writes c_q, then DequantizeLinear, Add, QuantizeLinear. kiln::QConv's mid quantization
(kernels/reference/quantized.py: mid_scale, mid_zp) rounds the conv's value to c_q's codes and
back inside the layer, adds the shortcut read as codes, and writes the block's output codes:
one kernel instead of a conv and an element-wise kernel (fuse_pointwise's Q/DQ group) with
c_q written and read back in between.

When: the QConv requantizes per tensor to int8/uint8 with no residual, no activation and no mid
quantization yet; c_q is read only by a DequantizeLinear with the same constant parameters, whose
output only the Add reads; the Add's other input is a per-tensor DequantizeLinear of int8/uint8
codes r_q of the output's shape; then optionally a Relu read only by the QuantizeLinear, which is
per tensor to int8/uint8 and saturating. Nothing in between is a graph output. In a block whose
shortcut is a conv too (a downsampling block) both convs qualify; the first in graph order folds
and reads the other's codes as its residual.

Exactness: the fused layer computes the chain in float64 with one rounding to c_q's codes (as the
unfused QConv does) and one to the output's; the unfused element-wise kernel rounds the
dequantized values and their sum to float32 in between, so an output can move by one code where
the sum falls within a float32 rounding of a tie (as fuse_qdq's fusions can). Run after fuse_qdq,
before fuse_pointwise (which would take the DQ -> Add -> Q chain).
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.quantized import QCONV_INPUTS
from kiln.passes.fuse_qdq import activation_input, mid_codes, output_quantize
from kiln.passes.match import drop_if_dead, live_ops, pinned, replace_nodes, sole_user

OUT_SCALE, OUT_ZP, RESIDUAL, RES_SCALE, RES_ZP, MID_SCALE, MID_ZP = (
    QCONV_INPUTS.index(n) for n in ("out_scale", "out_zp", "residual", "residual_scale", "residual_zp",
                                    "mid_scale", "mid_zp"))
CODES = dtypes.CODE_NAMES


def fuse_qdq_residual(graph: Graph) -> bool:
    """Fold each matching DQ -> Add -> [Relu] -> Q after a kiln::QConv into it (module docstring)."""
    changed = False
    for conv in live_ops(graph, "kiln::QConv"):
        changed |= _fold(graph, conv, pinned(graph))
    return changed


def _fold(graph: Graph, conv: Node, keep: set[int]) -> bool:
    if conv.input(RESIDUAL) is not None or conv.input(MID_SCALE) is not None:
        return False
    start = mid_codes(conv, keep)
    c_q = conv.outputs[0]
    if start is None:
        return False
    dq = start[0]
    add = sole_user(dq.outputs[0], keep)
    if add is None or add.qualified_op != "Add" or len(add.inputs) != 2:
        return False
    other = add.input(1) if add.input(0) is dq.outputs[0] else add.input(0)
    if other is dq.outputs[0]:
        return False
    shortcut = activation_input(other)
    if shortcut is None or int(shortcut[0].attrs.get("output_dtype", 0) or 0) or \
            other.shape is None or other.shape != add.outputs[0].shape or c_q.shape != add.outputs[0].shape:
        return False
    tail, relu = add.outputs[0], None
    nxt = sole_user(tail, keep)
    if nxt is not None and nxt.qualified_op == "Relu":
        relu, tail = nxt, nxt.outputs[0]
    found = output_quantize(tail, keep)
    if found is None or found[0].outputs[0].dtype is None or found[0].outputs[0].dtype.name not in CODES:
        return False
    q, out = found
    r_dq, r_p = shortcut
    inputs = list(conv.inputs) + [None] * (len(QCONV_INPUTS) - len(conv.inputs))
    inputs[MID_SCALE], inputs[MID_ZP] = inputs[OUT_SCALE], inputs[OUT_ZP]
    inputs[OUT_SCALE], inputs[OUT_ZP] = out.scale, out.zero_point
    inputs[RESIDUAL], inputs[RES_SCALE], inputs[RES_ZP] = r_dq.input(0), r_p.scale, r_p.zero_point
    attrs = {**conv.attrs, "out_dtype": q.outputs[0].dtype.onnx, "activation": "Relu" if relu else ""}
    # The new layer sits where the QuantizeLinear sat, after the shortcut's producer.
    replace_nodes(graph, [conv, dq, add, *([relu] if relu else []), q], "QConv", inputs, attrs, "kiln")
    drop_if_dead(graph, r_dq, keep)
    return True

"""Fold the bias ONNX Runtime adds after a quantized MatMul's own Q/DQ pair into the layer.

  kiln::QMatMul(a, w, ...; out = p_mm) -> DQ(p_mm) -> Add(c) -> [Add(r)] -> [act] -> [Q(p_out)]
    ->  kiln::QMatMul(a, w, ..., bias = c, residual = r, mid = p_mm, [out = p_out]; act)

ONNX Runtime's quantize_static (QDQ) quantizes a transformer's MatMul output before the separate
bias Add: MatMul -> Q -> DQ -> Add(bias) -> Q, so fuse_qdq makes a QMatMul that writes the
product's codes, and a Pointwise kernel dequantized them, added the bias and quantized again,
for every linear layer. kiln::QMatMul's mid quantization (mid_scale, mid_zp: the layer's own
codes before the bias, kernels/reference/quantized.py) computes the same rounding inside the
GEMM's epilogue, which then adds the bias, the residual and the activation (the Gelu a
transformer's FFN applies between the bias and its Q) and requantizes once.

When: the QMatMul requantizes per tensor to int8/uint8 with no bias, residual, activation or mid
quantization yet; its codes are read only by a DequantizeLinear of the same parameters
(fuse_qdq.mid_codes); that DQ's value is read by an Add of a constant per-column bias;
the epilogue chain (fuse_epilogues.collect_epilogue) may end in a QuantizeLinear to int8/uint8
per tensor (the new requantization), else the layer writes the float value (its readers' type:
a transformer's attention output projection feeding the residual LayerNorm; the tuner then lets
the mid rounding's near-tie step through, compiler/tolerance.mid_step). Run after
fuse_qdq_activation, before merge_parallel_matmuls (whose merged layers have no per-member mid
quantization).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.fuse_epilogues import Epilogue, bias_value, channel_vector, collect_epilogue
from kiln.passes.fuse_qdq import QUANT_INPUTS, mid_codes, output_quantize
from kiln.passes.match import live_ops, pinned, replace_nodes

BIAS, RESIDUAL, OUT_SCALE, OUT_ZP, MID_SCALE, MID_ZP = (
    QMATMUL_INPUTS.index(n) for n in ("bias", "residual", "out_scale", "out_zp", "mid_scale", "mid_zp"))


def fuse_qdq_bias(graph: Graph) -> bool:
    """Fold each matching DQ -> Add(bias) -> ... -> Q after a kiln::QMatMul into it (module docstring)."""
    changed = False
    for layer in live_ops(graph, "kiln::QMatMul"):
        changed |= _fold(graph, layer, pinned(graph))
    return changed


def _fold(graph: Graph, layer: Node, keep: set[int]) -> bool:
    if any(layer.input(i) is not None for i in (BIAS, RESIDUAL, MID_SCALE)):
        return False
    start = mid_codes(layer, keep)
    if start is None:
        return False
    dq = start[0]
    value = dq.outputs[0]
    n = value.shape[-1] if value.shape else None
    n = n if isinstance(n, int) else None
    ep = collect_epilogue(graph, value, Epilogue(None, None), keep, lambda c: channel_vector(c, value, -1, n))
    if ep.bias is None or not ep.nodes or ep.nodes[0].op != "Add":
        return False
    found = output_quantize(ep.nodes[-1].outputs[0], keep)
    if found is not None and (found[0].outputs[0].dtype is None or found[0].outputs[0].dtype.name not in QUANT_INPUTS):
        found = None
    bias = bias_value(graph, ep, value, [c for node in ep.nodes for c in node.inputs])
    if bias is False or bias is None:
        return False
    inputs = list(layer.inputs) + [None] * (len(QMATMUL_INPUTS) - len(layer.inputs))
    inputs[MID_SCALE], inputs[MID_ZP] = inputs[OUT_SCALE], inputs[OUT_ZP]
    inputs[OUT_SCALE], inputs[OUT_ZP] = (found[1].scale, found[1].zero_point) if found else (None, None)
    inputs[BIAS], inputs[RESIDUAL] = bias, ep.residual
    attrs = {**layer.attrs, "activation": ep.activation, "activation_params": list(ep.params),
             "out_dtype": found[0].outputs[0].dtype.onnx if found else 0}
    replace_nodes(graph, [layer, dq, *ep.nodes, *([found[0]] if found else [])], "QMatMul", inputs, attrs, "kiln")
    return True

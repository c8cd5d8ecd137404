"""Fold the QuantizeLinear after attention into kiln::Attention: the attention kernel requantizes.

  kiln::Attention(q, k, v, mask) -> y -> [S1 -> ... -> Sn] -> QuantizeLinear(., s, zp) -> x_q
    ->  kiln::Attention(q, k, v, mask, s, zp; out_dtype=T) -> y_q -> [S1 -> ... -> Sn] -> x_q

S1..Sn are shape ops (Transpose, Reshape, Flatten, Squeeze, Unsqueeze): a transformer's
attention output goes through Transpose(0, 2, 1, 3) and Reshape to [B, S, H*D] before the
output projection, whose quantized input (precision/int8.py, fp8.py) is that QuantizeLinear.
Why: the attention wrote its output in 16 bits and a QuantizeLinear kernel read it back and
wrote 8 bits (BERT-base b32: 12 such kernels); folded, the attention kernel writes the 8-bit
tensor itself and the shape ops move 8-bit values (they are views).
Exact as a rewrite: a per-tensor QuantizeLinear is element-wise, so it commutes with ops that
only move elements. The fused op rounds its float32 result once (kernels/reference/fused.py)
where the chain rounded it to the 16-bit output type first, which moves an output by one step
only next to a rounding boundary.

When: the attention has no requantization yet and one output; each value from y to the
QuantizeLinear's input is read once, by the next op of the chain (data input 0), and is not
pinned (graph output, subgraph capture); the QuantizeLinear has constant parameters to a type
the kernels write and positive scales, either per tensor (fold_requantize.per_tensor) or per
channel of the last axis (SmoothQuant's activation scales, precision/smooth_quant.py) where
the chain is the transformer's own: y [B, H, S, D] -> Transpose(0, 2, 1, 3) -> Reshape to
[B, S, H*D], so that channel h*D + d of the projection's input is (head h, dim d) of y, the
attention's per-channel out_scale (kernels/reference/fused.py).
The QuantizeLinear's output Value (name, readers, bindings) passes to the chain's last op
(or to the attention when the chain is empty); the values between take its type.
Run after quantize_layers / quantize_fp8, before the precision policy, as fold_requantize.
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.fused import ATTENTION_INPUTS
from kiln.passes.match import const_array, live_ops, pinned, place_inputs, sole_user
from kiln.precision.fold_requantize import per_last_channel, per_tensor, take_output

SHAPE_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
OUT_SCALE = ATTENTION_INPUTS.index("out_scale")


def quantize_attention_output(graph: Graph) -> int:
    """Fold each foldable QuantizeLinear after a kiln::Attention into it (module docstring); the
    number folded."""
    keep = pinned(graph)
    return sum(_fold(graph, node, keep) for node in live_ops(graph, "kiln::Attention"))


def _fold(graph: Graph, attention: Node, keep: set[int]) -> bool:
    if len(attention.outputs) != 1 or attention.attrs.get("out_dtype", 0) or attention.input(OUT_SCALE) is not None:
        return False
    chain: list[Node] = []
    v: Value = attention.outputs[0]
    reader = sole_user(v, keep)
    while reader is not None and reader.domain == "" and reader.op in SHAPE_OPS and reader.input(0) is v \
            and len(reader.outputs) == 1:
        chain.append(reader)
        v = reader.outputs[0]
        reader = sole_user(v, keep)
    if reader is None or reader.qualified_op != "QuantizeLinear" or reader.input(0) is not v:
        return False
    if not (per_tensor(reader) or _head_channels(attention.outputs[0], chain, reader)):
        return False
    if not bool((const_array(reader.input(1)) > 0).all()):
        return False
    q, x_q = reader, reader.outputs[0]
    scale, zp = q.input(1), q.input(2)
    graph.remove_node(q)
    place_inputs(attention, {OUT_SCALE: scale, OUT_SCALE + 1: zp})
    attention.attrs["out_dtype"] = x_q.dtype.onnx
    for node in [attention, *chain[:-1]]:
        node.outputs[0].dtype = x_q.dtype
    last = chain[-1] if chain else attention
    take_output(last, last.outputs[0], x_q)
    return True


def _head_channels(y: Value, chain: list[Node], q: Node) -> bool:
    """q quantizes per channel of the last axis of [B, S, H*D], made from y [B, H, S, D] by
    Transpose(0, 2, 1, 3) and Reshape (module docstring)."""
    if y.shape is None or len(y.shape) != 4 or len(chain) != 2:
        return False
    transpose, reshape = chain
    if transpose.op != "Transpose" or list(transpose.attrs.get("perm", ())) != [0, 2, 1, 3] or reshape.op != "Reshape":
        return False
    b, h, s, d = y.shape
    out = reshape.outputs[0].shape
    if not (isinstance(h, int) and isinstance(d, int) and out is not None and len(out) == 3):
        return False
    if out[2] != h * d or (isinstance(out[0], int) and isinstance(b, int) and out[0] != b) or \
            (isinstance(out[1], int) and isinstance(s, int) and out[1] != s):
        return False
    return per_last_channel(q, tuple(out))

"""Quantize a LayerNorm's output in the norm kernel: LayerNorm + QuantizeLinear -> kiln::NormQuantize.

  QuantizeLinear(LayerNormalization(X, Scale, B) -> Y, s, zp) -> Yq
      -> kiln::NormQuantize(X, -, Scale, B, s, zp) -> (Yq, [Y])
  QuantizeLinear(kiln::AddLayerNorm(X, R, Scale, B) -> (Y, [Sum]), s, zp) -> Yq
      -> kiln::NormQuantize(X, R, Scale, B, s, zp) -> (Yq, [Y], [Sum])

Why: in an int8/fp8 transformer every quantized matmul that reads a LayerNorm's output
(Q/K/V, the first FFN matmul) reads it through a QuantizeLinear: the norm writes Y, the
QuantizeLinear reads it back and writes Yq, one more pass over the activation and one more
kernel per norm (BERT-base: 24 of its 36 QuantizeLinear). Fused, the norm kernel quantizes
the row it holds in registers. Y stays an output (float_output=1) while anything else reads
it (post-norm models add it to the next residual) or it is a graph output; Sum as before.

When: the norm's Mean/InvStdDev are unused and stash_type is 1 (LayerNormalization), the
normalised dims are known and at most MAX_ROW elements (the fused kernel holds a row in
registers, as kiln::AddLayerNorm's), and a QuantizeLinear reads Y per tensor with constant
parameters (fold_requantize.py's per_tensor) or per channel of the last axis when the norm
normalises that axis alone (SmoothQuant's scales); one such QuantizeLinear is fused per norm.

Exactness: kiln::NormQuantize is defined as the two ops in sequence on Y as typed
(kernels/reference/norm_quantize.py), so it runs after the precision policy
(compiler/builder.py), when Y's type (fp16 in `--int8 --fp16`) and the QuantizeLinear's are
final; the reference gives the same values fused or not. A GPU kernel sums each row in its
own order, as any two LayerNorm kernels do, so Yq may differ by one step where Y/s meets a
rounding boundary (the tuner's rule for quantized layers, compiler/tolerance.py). The norm
keeps its name (layer precision rules, inspect).
"""
from __future__ import annotations

import math

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.ir.graph import Graph, Node
from kiln.passes.match import live_ops, pinned, trimmed
from kiln.precision.fold_requantize import per_tensor, per_last_channel

MAX_ROW = 16384  # the fused kernel's widest row (kernels/triton/norm.py BLOCK_MAX)
NORMS = ("LayerNormalization", "kiln::AddLayerNorm")


def fuse_norm_quantize(graph: Graph) -> bool:
    """Fuse a QuantizeLinear of each LayerNorm's output into the norm (module docstring); True if any."""
    keep = pinned(graph)
    changed = False
    for node in live_ops(graph, *NORMS):
        changed |= _fuse(graph, node, keep)
    return changed


def _per_last_channel(q: Node, shape: tuple, axis: int) -> bool:
    """Q has constant parameters per channel of the last axis, which the norm normalises alone
    (SmoothQuant's per-channel activation scales, precision/smooth_quant.py)."""
    return axis == len(shape) - 1 and per_last_channel(q, shape)


def _fuse(graph: Graph, norm: Node, keep: set[int]) -> bool:
    add = norm.qualified_op == "kiln::AddLayerNorm"
    if not add and (int(norm.attrs.get("stash_type", 1)) != 1
                    or any(o.uses() or id(o) in keep for o in norm.outputs[1:])):
        return False
    y, x = norm.outputs[0], norm.input(0)
    if y.dtype is None or y.dtype.name not in FLOAT_NAMES or x is None or x.shape is None:
        return False
    axis = int(norm.attrs.get("axis", -1))
    axis = axis + len(x.shape) if axis < 0 else axis
    row = x.shape[axis:] if 0 <= axis < len(x.shape) else None
    if row is None or not all(isinstance(d, int) for d in row) or math.prod(row) > MAX_ROW:
        return False
    q = next((user for user, _ in y.uses() if user.qualified_op == "QuantizeLinear" and user.input(0) is y
              and (per_tensor(user) or _per_last_channel(user, x.shape, axis))), None)
    if q is None:
        return False
    yq = q.outputs[0]
    others = id(y) in keep or any(user is not q for user, _ in y.uses())
    sums = list(norm.outputs[1:2]) if add else []
    inputs = [x, norm.input(1) if add else None, *(norm.input(i) for i in ((2, 3) if add else (1, 2))),
              q.input(1), q.input(2)]
    attrs = {"axis": int(norm.attrs.get("axis", -1)), "epsilon": float(norm.attrs.get("epsilon", 1e-5)),
             "output_dtype": yq.dtype.onnx, "precision": int(q.attrs.get("precision", 0) or 0),
             "float_output": int(others), "sum_output": int(bool(sums))}
    at = graph.nodes.index(norm)
    name, fused_from = norm.name, (norm.fused_from or (norm.name,)) + (q.fused_from or (q.name,))
    graph.remove_nodes([norm, q])
    anchor = graph.nodes[at] if at < len(graph.nodes) else None  # the norm's place (q came after it)
    outputs = [yq, *([y] if others else []), *sums]
    node = Node("NormQuantize", trimmed(inputs), outputs, attrs, name=name, domain="kiln")
    node.fused_from = fused_from
    graph.add_node(node, before=anchor)
    return True

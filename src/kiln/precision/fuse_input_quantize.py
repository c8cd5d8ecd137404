"""Quantize a quantized conv's float input in the layer itself: QuantizeLinear + kiln::QConv -> kiln::QConv
with attribute x_dtype.

  kiln::QConv(QuantizeLinear(X, s, zp) -> Xq, W, s, zp, ...)  ->  kiln::QConv(X, W, s, zp, ..., x_dtype=Xq's type)

Why: ResNet's stem reads the model's float input, which a QuantizeLinear pass turns into 8-bit
codes (on an H200 at batch 64: 17 us for 38 MB of float32 read, 10 MB written) before the conv's
framing copy reads the codes again to fold them space to depth (kernels/triton/qconv_s2d.py). The
framing copy can quantize as it copies (kernels/triton/frame.py), one pass over the float input
instead of two: the conv's S2D configs do; its other configs run the QuantizeLinear kernel first
(tactics/quantized_conv.py: the tuner times both).

When: Xq is read by that conv alone, as X, and is neither a graph output nor captured by a
subgraph; the QuantizeLinear is per tensor with constant parameters to W's 8-bit type (or to
uint8 under an int8 W: ONNX Runtime's QDQ models, the builder runs this pass for them too), divides in
its scale's type (no precision attribute), and its zero point is the conv's x_zp (the same value,
or constants equal in type and value); X is float; and the conv folds space
to depth (kernels/conv_fold.folds: the only walk whose copy quantizes, so that no other conv trades
its QuantizeLinear step for one inside the layer).

Its scale becomes the conv's x_quant_scale input where it is not the conv's x_scale: the precision
pass gives a float16 layer a float16 x_scale, while the QuantizeLinear of a float32 model input
keeps its float32 scale (ResNet-50 built --int8 --fp16: 0.037618175 against 0.03763), and the
codes are QuantizeLinear's with its own scale.

Exactness: the fused op is defined as the two it replaces (kernels/reference/quantized.qconv with
x_dtype quantizes X by the reference QuantizeLinear first), and the framing copy computes
QuantizeLinear's codes bit for bit (quantize.py's arithmetic). The conv keeps its name and place.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.conv_fold import conv_folds
from kiln.kernels.reference.quantized import QCONV_INPUTS
from kiln.passes.match import const_array, live_ops, pinned, place_inputs, sole_user
from kiln.precision.fold_requantize import per_tensor

X, W, X_SCALE, X_ZP = range(4)      # kiln::QConv's first inputs
X_QUANT_SCALE = QCONV_INPUTS.index("x_quant_scale")


def fuse_input_quantize(graph: Graph) -> bool:
    """Move into each folding kiln::QConv the QuantizeLinear that alone makes its X (module docstring)."""
    keep = pinned(graph)
    changed = False
    for conv in live_ops(graph, "kiln::QConv"):
        changed |= _fuse(graph, conv, keep)
    return changed


def _fuse(graph: Graph, conv: Node, keep: set[int]) -> bool:
    xq, w = conv.input(X), conv.input(W)
    if xq is None or w is None or conv.attrs.get("x_dtype") or not conv_folds(w.shape, conv.attrs):
        return False
    q = xq.producer()
    if q is None or q.qualified_op != "QuantizeLinear" or sole_user(xq, keep) is not conv:
        return False
    x = q.input(0)
    if x is None or x.dtype is None or x.dtype.name not in FLOAT_NAMES or xq.dtype is None or w.dtype is None:
        return False
    if xq.dtype != w.dtype and (xq.dtype.name, w.dtype.name) != ("uint8", "int8"):   # uint8 X: ONNX Runtime's
        return False
    if not per_tensor(q) or int(q.attrs.get("precision", 0) or 0):
        return False
    scale = q.input(1)      # a one-element float constant (per_tensor)
    if not _same(q.input(2), conv.input(X_ZP)) or scale.dtype.name not in FLOAT_NAMES:
        return False
    conv.set_input(X, x)
    if not _same(scale, conv.input(X_SCALE)):
        place_inputs(conv, {X_QUANT_SCALE: scale})
    conv.attrs = {**conv.attrs, "x_dtype": xq.dtype.onnx}
    conv.fused_from = (conv.fused_from or (conv.name,)) + (q.fused_from or (q.name,))
    graph.remove_node(q)
    return True


def _same(a: Value | None, b: Value | None) -> bool:
    """The same value, or both absent, or constants equal in type, shape and value."""
    if a is b:
        return True
    if a is None or b is None or a.dtype != b.dtype:
        return False
    va, vb = const_array(a), const_array(b)
    return va is not None and vb is not None and va.shape == vb.shape and bool(np.array_equal(va, vb))

"""Explicitly quantized models whose own quantization erases tensors: a build-time warning.

A QuantizeLinear with a scale above ERASING_SCALE rounds every value of magnitude below half its
scale (every finite float16 value, any activation a float model computes) to its zero point:
past the Q/DQ pair the tensor keeps only values as large as float32's extremes. Quantizers write
such a scale when they calibrate a tensor holding those extremes: ONNX Runtime's quantize_static
on a transformer whose attention mask is added as -3.4e38 gives the mask and the Add of scores
and mask a scale near 1.3e36. On the mask alone (0 and -3.4e38) nothing is lost; on the scores
plus mask every score becomes 0 and each softmax is uniform over the unmasked keys. kiln
computes what the model states, as ONNX Runtime does; the warning names the nodes to leave out
of quantization so that the model keeps its information.
"""
from __future__ import annotations

import warnings

import numpy as np

from kiln.ir.graph import Graph, Node
from kiln.passes.match import const_array
from kiln.precision.overflow import FP16_MAX

# Above this every finite float16 value rounds to the zero point (|x| / scale < 0.5).
ERASING_SCALE = 2 * FP16_MAX
QUANT_SUFFIX = "_quant"   # ONNX Runtime's QOperator quantizer: a quantized node's name is the float one's + this


class ErasedTensorWarning(UserWarning):
    """A QuantizeLinear of the model maps every finite activation to its zero point."""


def erasing_quantizers(graph: Graph) -> list[tuple[Node, float]]:
    """(QuantizeLinear node, its largest scale) for each whose constant scale exceeds ERASING_SCALE."""
    found = []
    for node in graph.nodes:
        scale = const_array(node.input(1)) if node.qualified_op == "QuantizeLinear" and len(node.inputs) > 1 else None
        if scale is None or scale.size == 0:
            continue
        scale = np.abs(scale.astype(np.float64))
        if float(scale.max()) > ERASING_SCALE:
            found.append((node, float(scale.max())))
    return found


def nodes_to_exclude(found: list[tuple[Node, float]]) -> list[str]:
    """The float model's names of the nodes that write and read the erased tensors, in the order
    found: ONNX Runtime's quantizer puts a Q/DQ pair on a tensor while any of them is quantized, so
    all of them stay out. In a QOperator model a quantized node (QLinearAdd, QLinearSoftmax ...:
    onnx/qoperator.py keeps its name on the float op) is named after the float one plus QUANT_SUFFIX."""
    names: list[str] = []
    for node, _ in found:
        x = node.input(0)
        readers = [c for dq in node.outputs[0].consumers() if dq.op == "DequantizeLinear"
                   for out in dq.outputs for c in out.consumers()]
        for n in ([x.producer()] if x is not None else []) + readers:
            if n is None or n.op in ("QuantizeLinear", "DequantizeLinear"):
                continue
            name = n.name.removesuffix(QUANT_SUFFIX)
            if name not in names:
                names.append(name)
    return names


def erasing_message(found: list[tuple[Node, float]]) -> str:
    """The warning's text for these erasing QuantizeLinears (one paragraph: what, why, the fix)."""
    largest = max(scale for _, scale in found)
    return (f"{len(found)} QuantizeLinear node(s) of the model have scales above {ERASING_SCALE:g} (largest "
            f"{largest:.4g}, on '{found[0][0].name}'): each keeps only values at least half its scale in "
            f"magnitude (float32's extremes, such as an attention mask's -3.4e38) and rounds every other value "
            f"to its zero point. Where the tensor holds other values too (scores plus such a mask, before a "
            f"softmax) they are erased, and the attention becomes uniform over the unmasked keys. kiln computes "
            f"the model as it is stated; to keep that information, leave the nodes that write and read these "
            f"tensors out of quantization and quantize again (onnxruntime.quantization: "
            f"nodes_to_exclude={nodes_to_exclude(found)}).")


def warn_erasing_quantizers(graph: Graph) -> int:
    """One ErasedTensorWarning naming the erasing QuantizeLinears' tensors (module docstring); how many."""
    found = erasing_quantizers(graph)
    if found:
        warnings.warn(erasing_message(found), ErasedTensorWarning, stacklevel=2)
    return len(found)

"""ONNX Runtime's QOperator-format quantized ops, in the form the rest of kiln takes, at import.

onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QOperator) (and the int8
models of the ONNX model zoo and of TFLite converters) write quantized layers as single ops:

  QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B)  -> kiln::QConv(x, w, xs, xz, ws, wz, bias, -, ys, yz)
  QLinearMatMul(a, as, az, b, bs, bz, ys, yz)   -> kiln::QMatMul(a, b, as, az, bs, bz, -, -, ys, yz)
      (b a constant 2-D weight and a per tensor; b an activation, as in an attention: the
      DQ -> MatMul -> Q below; else it stays, on the reference)
  com.microsoft QGemm(a, as, az, b, bs, bz, C, [ys, yz]) -> kiln::QMatMul(..., bias, ...; trans_b)
  com.microsoft QLinearAdd / QLinearMul / QLinearSigmoid / QLinearLeakyRelu /
  QLinearGlobalAveragePool / QLinearAveragePool / QLinearConcat / QLinearSoftmax (last axis)
                                                -> DequantizeLinear of each input -> the float op
                                                   -> QuantizeLinear to the output's parameters

The quantized layers compute what the QLinear op defines (the integer products summed exactly,
requantized with round-half-to-even and saturation), the int32 bias B becoming the float
B * xs * ws per channel (rounded once to float32); they are mapped in the IR as the importer
adds them (expand_qoperator). The contrib ops become, in the ONNX model before its shape
inference (expand_contrib, so that every new value gets its type and shape), the DQ -> op -> Q
chain an ONNX Runtime QDQ model has in their place, which fuse_qdq, fuse_qdq_residual and
fuse_pointwise then treat as they treat that model's. A missing output zero point is the zero of
the first input's zero point's type (the contrib ops output their input's type; uint8 when that
is missing too, as QuantizeLinear's default). Ops this file does not map (channels-last pools, a
runtime bias) stay as they are, and the support check names them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value

QUANTIZED_LAYERS = ("QLinearConv", "QLinearMatMul")


def expand_qoperator(graph: Graph, node: Node) -> bool:
    """Replace `node` (a QLinearConv/QLinearMatMul/QGemm just added to `graph`) by its kiln layer
    (module docstring); False when it is not one or not mapped."""
    if node.domain == "com.microsoft" and node.op == "QGemm":
        return _qgemm(graph, node)
    return node.domain == "" and node.op in QUANTIZED_LAYERS and _quantized_layer(graph, node)


def _qgemm(graph: Graph, node: Node) -> bool:
    """com.microsoft QGemm(A, as, az, B, bs, bz, C, ys, yz) with alpha 1 and transA 0, B a constant
    2-D weight, A per tensor: kiln::QMatMul(trans_b = transB), the int32 C becoming the float
    C * as * bs; a float output where ys is absent."""
    a, a_s, az, b, bs, bz, c, ys, yz = list(node.inputs) + [None] * (9 - len(node.inputs))
    a_scale = _const(a_s)
    if float(node.attrs.get("alpha", 1.0)) != 1.0 or node.attrs.get("transA", 0) or b is None or b.const is None \
            or b.shape is None or len(b.shape) != 2 or a_scale is None or a_scale.size != 1 \
            or (c is not None and (c.const is None or _const(c).ndim > 1)):
        return False
    trans_b = int(node.attrs.get("transB", 0))
    bias = _float_bias(graph, node, c, a_s, bs)
    y = node.outputs[0]
    if y.dtype is None:       # no ONNX shape inference for contrib ops: float without ys, else yz's (uint8)
        y.dtype = a_s.dtype if ys is None else (yz.dtype if yz is not None else dtypes.BY_NAME["uint8"])
    if y.shape is None and a.shape is not None:
        y.shape = (a.shape[0], b.shape[0 if trans_b else 1])
    attrs = {"activation": "", "activation_params": [], "trans_b": trans_b,
             "out_dtype": 0 if ys is None else _out_type(node, yz)}
    inputs = [a, b, a_s, az, bs, bz, bias, None, ys, yz]
    return _replace(graph, node, lambda: [Node("QMatMul", inputs, [y], attrs, name=node.name, domain="kiln")])


def _const(v: Value | None) -> np.ndarray | None:
    if v is None or v.const is None:
        return None
    c = v.const
    return c.to(torch.float64).numpy() if isinstance(c, torch.Tensor) else np.asarray(c, dtype=np.float64)


def _float_bias(graph: Graph, node: Node, b: Value | None, x_scale: Value, w_scale: Value) -> Value | None:
    """The int32 bias B (scale x_scale * w_scale, zero point 0) as float32 values B * x_scale * w_scale,
    per output channel; None without one."""
    if b is None:
        return None
    scale = _const(x_scale).reshape(-1) * _const(w_scale).reshape(-1)
    return graph.constant((_const(b).reshape(-1) * scale).astype(np.float32), f"{node.name}_bias")


def _replace(graph: Graph, node: Node, make: Callable[[], list[Node]]) -> bool:
    """Remove `node` (its outputs lose their producer), then add the nodes `make` builds, which
    produce those outputs."""
    graph.remove_node(node)
    for n in make():
        n.name = graph.unique_name(n.name or n.op)
        graph.add_node(n)
    return True


def _quantized_layer(graph: Graph, node: Node) -> bool:
    ins = list(node.inputs) + [None] * (9 - len(node.inputs))
    if node.op == "QLinearConv":
        x, xs, xz, w, ws, wz, ys, yz, b = ins
        if w is None or w.const is None or (b is not None and b.const is None):
            return False
        bias = _float_bias(graph, node, b, xs, ws)
        attrs = {**node.attrs, "activation": "", "activation_params": [], "out_dtype": _out_type(node, yz)}
        inputs = [x, w, xs, xz, ws, wz, bias, None, ys, yz]
        op = "QConv"
    else:
        a, a_s, az, b, bs, bz, ys, yz = ins[:8]
        a_scale = _const(a_s)
        if b is None or b.const is None or b.shape is None or len(b.shape) != 2 or a_scale is None \
                or a_scale.size != 1:
            return False     # two activations, or a per-row a_scale: the reference QLinearMatMul
        attrs = {"activation": "", "activation_params": [], "out_dtype": _out_type(node, yz), "trans_b": 0}
        inputs = [a, b, a_s, az, bs, bz, None, None, ys, yz]
        op = "QMatMul"
    return _replace(graph, node, lambda: [Node(op, inputs, list(node.outputs), attrs, name=node.name, domain="kiln")])


def _out_type(node: Node, y_zero_point: Value | None) -> int:
    """The QLinear op's output type (its y_zero_point's; uint8 without one), as an ONNX code."""
    dt = y_zero_point.dtype if y_zero_point is not None else node.outputs[0].dtype
    return dt.onnx if dt is not None else 2


# --- contrib ops, in the ONNX model -------------------------------------------------------------

# op -> (float op, its attributes from the contrib op's (None: not mapped), how the inputs group)
# Layouts: "binary" A, As, Az, B, Bs, Bz, Cs, Cz; "unary" X, Xs, Xz, Ys, Yz; "concat" Ys, Yz, (X, Xs, Xz)...
def _alpha(attrs: dict) -> dict | None:
    return {"alpha": attrs.get("alpha", 0.01)}


def _softmax(attrs: dict) -> dict | None:
    """Softmax over the last axis (None, not mapped, for another: the contrib op's `opset` may
    name the flattening semantics of Softmax before opset 13, which agree only on the last axis)."""
    return {"axis": -1} if int(attrs.get("axis", -1)) == -1 else None


def _pool(attrs: dict) -> dict | None:
    """A pool's attributes less channels_last; None (not mapped) for a channels-last pool."""
    return None if attrs.pop("channels_last", 0) else attrs


CONTRIB: dict[str, tuple[str, Callable[[dict], dict | None], str]] = {
    "QLinearAdd": ("Add", lambda a: {}, "binary"),
    "QLinearMul": ("Mul", lambda a: {}, "binary"),
    "QLinearSigmoid": ("Sigmoid", lambda a: {}, "unary"),
    "QLinearLeakyRelu": ("LeakyRelu", _alpha, "unary"),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", _pool, "unary"),
    "QLinearAveragePool": ("AveragePool", _pool, "unary"),
    "QLinearConcat": ("Concat", lambda a: {"axis": a.get("axis", 0)}, "concat"),
    "QLinearSoftmax": ("Softmax", _softmax, "unary"),
}
# QLinearMatMul of two activations (an attention's Q K^T and P V): DQ, DQ -> MatMul -> Q, the
# form an ONNX Runtime QDQ model has there (precision/fuse_qdq_attention.py takes the attention).
ACTIVATION_MATMUL = ("MatMul", lambda a: {}, "binary")


def _spec(node: onnx.NodeProto, constants: set[str]) -> tuple[str, Callable[[dict], dict | None], str] | None:
    if node.domain == "com.microsoft":
        return CONTRIB.get(node.op_type)
    if node.domain in ("", "ai.onnx") and node.op_type == "QLinearMatMul" and len(node.input) > 3 \
            and node.input[3] not in constants:
        return ACTIVATION_MATMUL
    return None


def _groups(ins: list[str], layout: str) -> tuple[list[tuple[str, str, str]], tuple[str, str]] | None:
    """((x, scale, zero point) per quantized input, (output scale, output zero point)); "" = absent."""
    if layout == "binary":
        ins = ins + [""] * (8 - len(ins))
        return [tuple(ins[0:3]), tuple(ins[3:6])], (ins[6], ins[7])
    if layout == "unary":
        ins = ins + [""] * (5 - len(ins))
        return [tuple(ins[0:3])], (ins[3], ins[4])
    if len(ins) < 5 or (len(ins) - 2) % 3:
        return None
    return [tuple(ins[i:i + 3]) for i in range(2, len(ins), 3)], (ins[0], ins[1])


def expand_contrib(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its top-level com.microsoft QLinear ops (CONTRIB) and its QLinearMatMuls of two
    activations as DQ -> op -> Q (module docstring): a copy, or `model` itself when it has none."""
    constants = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") for o in n.output}
    if not any(_spec(n, constants) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = {i.name: i.data_type for i in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(out.graph.node):
        spec = _spec(node, constants)
        attrs = spec[1]({a.name: helper.get_attribute_value(a) for a in node.attribute}) if spec else None
        groups = _groups(list(node.input), spec[2]) if attrs is not None else None
        if groups is None or len(node.output) != 1:
            nodes.append(node)
            continue
        tag = f"{node.name or node.op_type}_{k}"
        floats = []
        for j, (x, scale, zp) in enumerate(groups[0]):
            floats.append(f"{tag}_dq{j}")
            nodes.append(helper.make_node("DequantizeLinear", [x, scale] + ([zp] if zp else []), [floats[-1]],
                                          name=f"{tag}_dq{j}"))
        # the float op keeps the contrib node's name: what a user's tools (and kiln's warnings) call it
        nodes.append(helper.make_node(spec[0], floats, [f"{tag}_float"], name=node.name or f"{tag}_{spec[0]}",
                                      **attrs))
        y_scale, y_zp = groups[1]
        if not y_zp and types.get(groups[0][0][2]) not in (None, onnx.TensorProto.UINT8):
            y_zp = f"{tag}_y_zero_point"     # the input's type, not QuantizeLinear's default uint8
            out.graph.initializer.append(numpy_helper.from_array(
                np.zeros((), dtype=helper.tensor_dtype_to_np_dtype(types[groups[0][0][2]])), y_zp))
        nodes.append(helper.make_node("QuantizeLinear", [f"{tag}_float", y_scale] + ([y_zp] if y_zp else []),
                                      list(node.output), name=f"{tag}_q"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out

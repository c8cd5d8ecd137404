"""Implicit (calibrated) INT8: matmuls and convolutions with a calibrated input range run on int8.

Rewrite, for each layer L whose weight W is a float constant and whose activation input x
has a calibrated range amax > 0 (s_x = amax / 127, s_w[c] = max|W_c| / 127 per output channel):

  L(x, W, bias, residual, act)  ->  kiln::QMatMul | kiln::QConv(
                                        QuantizeLinear(x, s_x, 0 int8),       per tensor
                                        round(W / s_w) int8, s_w,             per output channel
                                        bias, residual, act)                  float output

(per_tensor_weights, BuildConfig.weight_scales "tensor": one s_w = max|W| / 127 per layer) with
L one of kiln::FusedMatMul, kiln::FusedConv, MatMul, Gemm (transA=0, alpha=1, beta=1) or Conv.
The quantized op accumulates exactly and rounds once to x's float type
(kernels/reference/quantized.py), so the output keeps its dtype and every reader, graph
outputs included, is untouched. FusedMatMul's alpha is folded into s_w. One QuantizeLinear
per activation serves all of its quantized readers. Layers that do not fit stay float and
the report says why (no range, a weight that is not a float constant, a batched weight ...).

Run after the optimisation passes (layers fused, weights folded into constants) and with
ranges collected on that same graph (kiln.calibration.collect_ranges): ranges are keyed by
the names of its values. A build with BuildConfig.smooth_quant first runs SmoothQuant
(precision/smooth_quant.py), which folds per-channel factors into LayerNorms and weights and
returns the ranges to quantize with here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Collection, Mapping

import numpy as np
import torch
from onnx import TensorProto

from kiln.calibration.calibrators import INT8_QMAX, weight_scales
from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import const_array, replace_nodes
from kiln.precision.gptq import GPTQRounding

# Activation types a quantized layer can take (its float output is rounded to this type).
_FLOAT_ACTIVATIONS = ("float32", "float16")
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@dataclass(frozen=True, slots=True)
class QuantizedLayer:
    """A layer that now runs on int8 (`layer` is the new node's name), or one that stays float, and why."""
    layer: str
    op: str      # the op it was: "kiln::FusedMatMul", "Conv", ...
    reason: str  # empty for a quantized layer
    fused_from: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "op": self.op, "fused_from": list(self.fused_from)}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class QuantizeReport:
    quantized: tuple[QuantizedLayer, ...]
    kept_float: tuple[QuantizedLayer, ...]

    @property
    def changed(self) -> bool:
        return bool(self.quantized)

    def to_json(self) -> dict[str, Any]:
        return {"quantized": [q.to_json() for q in self.quantized],
                "kept_float": [q.to_json() for q in self.kept_float]}


@dataclass(frozen=True, slots=True)
class QuantizableLayer:
    """What a candidate layer computes, read off its node: act(alpha * x @ W' + bias + residual)."""
    x: Value
    w: np.ndarray
    axis: int               # W's output-channel axis
    bias: Value | None
    residual: Value | None
    attrs: dict[str, Any]   # the quantized op's attributes
    alpha: float = 1.0


def quantize_layers(graph: Graph, ranges: Mapping[str, float], keep_float: Collection[int] = (), *,
                    per_tensor_weights: bool = False, rounding: GPTQRounding | None = None) -> QuantizeReport:
    """Quantize every supported layer with a calibrated input range to int8 (module docstring).

    `keep_float`: ids of nodes to leave in float (e.g. those a layer precision rule names);
    per_tensor_weights: one weight scale per layer, max|W| / 127 (BuildConfig.weight_scales);
    rounding: GPTQ's weight codes (precision/gptq.py), else nearest."""
    return quantize_with(graph, ranges, keep_float, partial(_rewrite, per_tensor=per_tensor_weights,
                                                            rounding=rounding))


def quantize_with(graph: Graph, ranges: Mapping[str, float], keep_float: Collection[int],
                  rewrite: Callable[..., Node]) -> QuantizeReport:
    """The walk shared by int8 and fp8: `rewrite(graph, node, layer, amax, shared_q)` turns one
    supported layer into its quantized form; the rest are reported as kept float, with why."""
    quantized: list[QuantizedLayer] = []
    kept: list[QuantizedLayer] = []
    shared_q: dict[int, Value] = {}
    for node in list(graph.nodes):
        if node.qualified_op not in QUANTIZABLE_OPS:
            continue
        entry = QuantizedLayer(node.name, node.qualified_op, "", node.fused_from)
        if id(node) in keep_float:
            kept.append(kept_float(entry, "a layer precision rule keeps it in float"))
            continue
        layer = QUANTIZABLE_OPS[node.qualified_op](node)
        why = layer if isinstance(layer, str) else unsupported_reason(layer, ranges)
        if why:
            kept.append(kept_float(entry, why))
            continue
        new = rewrite(graph, node, layer, ranges[layer.x.name], shared_q)
        quantized.append(QuantizedLayer(new.name, entry.op, "", new.fused_from))
    graph.sort()
    return QuantizeReport(tuple(quantized), tuple(kept))


def kept_float(entry: QuantizedLayer, reason: str) -> QuantizedLayer:
    return QuantizedLayer(entry.layer, entry.op, reason, entry.fused_from)


def unsupported_reason(layer: QuantizableLayer, ranges: Mapping[str, float]) -> str:
    x = layer.x
    if x.dtype is None or x.dtype.name not in _FLOAT_ACTIVATIONS:
        return f"its input {x.name!r} is {x.dtype.name if x.dtype else 'of unknown type'}, not float32 or float16"
    if x.name not in ranges:
        return f"its input {x.name!r} has no calibrated range"
    if not ranges[x.name] > 0:
        return f"its input {x.name!r} was all zeros in the calibration data (range 0)"
    return ""


# ---------------------------------------------------------------- reading the candidates


def _weight(v: Value | None, rank: int | None = None) -> np.ndarray | str:
    arr = const_array(v)
    if arr is None:
        return "its weight is not a constant"
    if arr.dtype not in (np.float32, np.float16):
        return f"its weight is {arr.dtype}, not a float32 or float16 constant"
    if rank is not None and arr.ndim != rank:
        return f"its weight has rank {arr.ndim}, not {rank} (only one weight matrix shared by all rows is supported)"
    if arr.size == 0:
        return "its weight is empty"
    return arr


def _channel_bias(b: Value | None, channels: int) -> bool:
    """A bias the quantized op can add: one value per output channel (any leading 1 dims)."""
    if b is None:
        return True
    if b.shape is None or not all(isinstance(d, int) for d in b.shape):
        return False
    dims = list(b.shape)
    return bool(dims) and dims[-1] == channels and all(d == 1 for d in dims[:-1])


def _matmul_layer(x: Value | None, w_v: Value | None, trans_b: int, bias: Value | None, residual: Value | None,
                  activation: str, params: Any, alpha: float) -> QuantizableLayer | str:
    if x is None:
        return "it has no activation input"
    w = _weight(w_v, 2)
    if isinstance(w, str):
        return w
    axis = 0 if trans_b else 1
    if not _channel_bias(bias, w.shape[axis]):
        return "its bias is not one value per output channel"
    attrs = {"trans_b": int(trans_b), "activation": activation, "activation_params": list(params), "out_dtype": 0}
    return QuantizableLayer(x, w, axis, bias, residual, attrs, alpha)


def _fused_matmul(n: Node) -> QuantizableLayer | str:
    a = n.attrs
    return _matmul_layer(n.input(0), n.input(1), a.get("trans_b", 0), n.input(2), n.input(3),
                         a.get("activation", ""), a.get("activation_params", ()), float(a.get("alpha", 1.0)))


def _matmul(n: Node) -> QuantizableLayer | str:
    return _matmul_layer(n.input(0), n.input(1), 0, None, None, "", (), 1.0)


def _gemm(n: Node) -> QuantizableLayer | str:
    a = n.attrs
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        return "Gemm with transA, alpha != 1 or beta != 1 is not supported"
    return _matmul_layer(n.input(0), n.input(1), a.get("transB", 0), n.input(2), None, "", (), 1.0)


def _conv_layer(n: Node, residual: Value | None, activation: str, params: Any) -> QuantizableLayer | str:
    if n.input(0) is None:
        return "it has no activation input"
    w = _weight(n.input(1))
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"its weight has rank {w.ndim}; a convolution weight is [M, C/group, *kernel]"
    if not _channel_bias(n.input(2), w.shape[0]) or (n.input(2) is not None and len(n.input(2).shape) != 1):
        return "its bias is not a 1-D vector of one value per output channel"
    attrs = {k: v for k, v in n.attrs.items() if k in _CONV_ATTRS}
    attrs.update(activation=activation, activation_params=list(params), out_dtype=0)
    return QuantizableLayer(n.input(0), w, 0, n.input(2), residual, attrs)


def _fused_conv(n: Node) -> QuantizableLayer | str:
    return _conv_layer(n, n.input(3), n.attrs.get("activation", ""), n.attrs.get("activation_params", ()))


def _conv(n: Node) -> QuantizableLayer | str:
    return _conv_layer(n, None, "", ())


# qualified op -> how to read it as a layer (or why it cannot be quantized)
QUANTIZABLE_OPS = {
    "kiln::FusedMatMul": _fused_matmul,
    "kiln::FusedConv": _fused_conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
}


# ---------------------------------------------------------------- the rewrite


def input_scale(graph: Graph, x: Value, amax: float | np.ndarray, suffix: str = "_scale") -> Value:
    """amax / 127 in x's float type as a constant named after x (per channel for an array amax)."""
    return graph.constant((np.asarray(amax, dtype=np.float64) / INT8_QMAX).astype(np.dtype(x.dtype.name)),
                          f"{x.name}{suffix}")


def quantize_input(graph: Graph, x: Value, amax: float | np.ndarray, before: Node) -> Value:
    """A new QuantizeLinear(x, amax / 127, 0) -> int8, placed before `before`; its output. An array
    `amax` quantizes per channel of x's last axis."""
    scale = input_scale(graph, x, amax)
    zp = graph.constant(np.zeros(np.shape(amax), dtype=np.int8), f"{x.name}_zero_point")
    x_q = graph.value(f"{x.name}_int8", dtypes.BY_NAME["int8"], x.shape)
    q = Node("QuantizeLinear", [x, scale, zp], [x_q], {"output_dtype": TensorProto.INT8, "saturate": 1,
                                                       **({"axis": -1} if np.ndim(amax) else {})},
             name=graph.unique_name(f"{x.name}_quantize"))
    graph.add_node(q, before=before)
    return x_q


def encode_int8(t: torch.Tensor) -> torch.Tensor:
    """Values in code units -> the nearest int8 codes (ties to even, saturated at +-127), same dtype."""
    return torch.round(t).clamp(-INT8_QMAX, INT8_QMAX)


def _rewrite(graph: Graph, node: Node, layer: QuantizableLayer, amax: float, shared_q: dict[int, Value], *,
             per_tensor: bool = False, rounding: GPTQRounding | None = None) -> Node:
    x = layer.x
    if id(x) not in shared_q:  # one QuantizeLinear per activation, shared by its quantized readers
        shared_q[id(x)] = quantize_input(graph, x, amax, node)
    x_q = shared_q[id(x)]
    scale, zp = x_q.producer().input(1), x_q.producer().input(2)

    w = layer.w.astype(np.float32)
    w_scale = weight_scales(w, layer.axis, per_tensor=per_tensor)  # [C] (or [1]) float32
    shape = [1] * w.ndim
    shape[layer.axis] = -1
    op = "QConv" if node.op in ("Conv", "FusedConv") else "QMatMul"
    codes = None if rounding is None else \
        rounding.codes(node.name, x.name, w, w_scale, layer.axis, encode_int8)
    if codes is None:
        codes = np.clip(np.round(w / w_scale.reshape(shape)), -INT8_QMAX, INT8_QMAX)
    w_q = codes.astype(np.int8)
    w_scale = (w_scale.astype(np.float64) * layer.alpha).astype(np.float32)
    inputs = [x_q, graph.constant(w_q, f"{node.name}_w_int8"), scale, zp,
              graph.constant(w_scale, f"{node.name}_w_scale"), None, layer.bias, layer.residual]
    return replace_nodes(graph, [node], op, inputs, dict(layer.attrs), "kiln")

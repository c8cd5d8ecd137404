"""Implicit (calibrated) FP8 E4M3: matmuls and convolutions with a calibrated input range run on float8.

The fp8 twin of precision/int8.py, with the same candidates, the same calibration ranges and
the same reasons for keeping a layer float; only the quantized type and its qmax differ. For
each layer L whose weight W is a float constant and whose activation input x has a calibrated
range amax > 0 (s_x = amax / 448, s_w[c] = max|W_c| / 448 per output channel; 448 is the
largest finite float8_e4m3fn):

  L(x, W, bias, residual, act)  ->  kiln::QMatMul | kiln::QConv(
                                        QuantizeLinear(x, s_x -> float8_e4m3fn, saturate=1),  per tensor
                                        fp8(W / s_w), s_w,                    per output channel
                                        bias, residual, act)                  float output

(per_tensor_weights, BuildConfig.weight_scales "tensor": one s_w = max|W| / 448 per layer.)

fp8(.) rounds to nearest even and saturates at +-448; float8 has no zero point, so every zero
point is absent (QuantizeLinear takes its type from output_dtype). Activations beyond the
calibrated range saturate to +-448 * s_x rather than overflow to NaN. The weights are
torch.float8_e4m3fn constants (numpy has no float8 type), which engine files store as raw
bytes like any other tensor.

The quantized op upcasts the fp8 values exactly, sums their products exactly in float64 and
rounds once to x's float type (kernels/reference/quantized.py, which states the bound on the
reduction length). That reference is the arithmetic contract of the GPU fast path, which is
future work: torch._scaled_mm or a Triton fp8 dot (float32 accumulation on the tensor cores,
to be accepted within the tolerance the tactic declares against this reference).

Run after the optimisation passes and with ranges collected on that same graph
(kiln.calibration.collect_ranges), as int8.
"""
from __future__ import annotations

from functools import partial
from typing import Collection, Mapping

import numpy as np
import torch
from onnx import TensorProto

from kiln.calibration.calibrators import FP8_E4M3_QMAX, weight_scales
from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import replace_nodes
from kiln.precision.gptq import GPTQRounding
from kiln.precision.int8 import QuantizableLayer, QuantizeReport, quantize_with

FP8 = dtypes.BY_NAME["float8_e4m3fn"]


def quantize_fp8(graph: Graph, ranges: Mapping[str, float], keep_float: Collection[int] = (), *,
                 per_tensor_weights: bool = False, rounding: GPTQRounding | None = None) -> QuantizeReport:
    """Quantize every supported layer with a calibrated input range to fp8 E4M3 (module docstring).

    `keep_float`: ids of nodes to leave in float (e.g. those a layer precision rule names);
    per_tensor_weights: one weight scale per layer, max|W| / 448 (BuildConfig.weight_scales);
    rounding: GPTQ's weight codes (precision/gptq.py), else nearest.
    The report has int8's shape (QuantizeReport): which layers were quantized, which kept float and why."""
    return quantize_with(graph, ranges, keep_float, partial(_rewrite, per_tensor=per_tensor_weights,
                                                            rounding=rounding))


def fp8_weight(w: np.ndarray, axis: int, per_tensor: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """(fp8(W / s_w) as float8_e4m3fn, s_w float32 [C]) with s_w[c] = max|W_c| / 448 along `axis`
    (per_tensor: s_w [1] = max|W| / 448)."""
    w32 = np.asarray(w, dtype=np.float32)
    scale = weight_scales(w32, axis, FP8_E4M3_QMAX, per_tensor=per_tensor)  # [C] or [1] float32
    shape = [1] * w32.ndim
    shape[axis] = -1
    # max|W_c| / s_w can land a float32 ulp above 448: clamp (saturate) before the RNE cast.
    q = torch.from_numpy(w32 / scale.reshape(shape)).clamp(-FP8_E4M3_QMAX, FP8_E4M3_QMAX)
    return q.to(torch.float8_e4m3fn), scale


def encode_fp8(t: torch.Tensor) -> torch.Tensor:
    """Values in code units -> the nearest float8 e4m3 values (rounded from float32, saturated at +-448),
    same dtype."""
    return t.to(torch.float32).clamp(-FP8_E4M3_QMAX, FP8_E4M3_QMAX).to(torch.float8_e4m3fn).to(t.dtype)


def quantize_input(graph: Graph, x: Value, amax: float, before: Node) -> Value:
    """A new saturating QuantizeLinear(x, amax / 448) -> float8_e4m3fn, placed before `before`; its output."""
    scale = graph.constant(np.array(amax / FP8_E4M3_QMAX, dtype=np.dtype(x.dtype.name)), f"{x.name}_fp8_scale")
    x_q = graph.value(f"{x.name}_fp8", FP8, x.shape)
    q = Node("QuantizeLinear", [x, scale], [x_q], {"output_dtype": TensorProto.FLOAT8E4M3FN, "saturate": 1},
             name=graph.unique_name(f"{x.name}_quantize_fp8"))
    graph.add_node(q, before=before)
    return x_q


def _rewrite(graph: Graph, node: Node, layer: QuantizableLayer, amax: float, shared_q: dict[int, Value], *,
             per_tensor: bool = False, rounding: GPTQRounding | None = None) -> Node:
    x = layer.x
    if id(x) not in shared_q:  # one QuantizeLinear per activation, shared by its quantized readers
        shared_q[id(x)] = quantize_input(graph, x, amax, node)
    x_q = shared_q[id(x)]
    op = "QConv" if node.op in ("Conv", "FusedConv") else "QMatMul"
    w_q, w_scale = fp8_weight(layer.w, layer.axis, per_tensor)
    codes = None if rounding is None else \
        rounding.codes(node.name, x.name, layer.w, w_scale, layer.axis, encode_fp8)
    if codes is not None:  # GPTQ's codes are float8 values already: the cast is exact
        w_q = torch.from_numpy(codes).to(torch.float8_e4m3fn)
    w_scale = (w_scale.astype(np.float64) * layer.alpha).astype(np.float32)
    inputs = [x_q, graph.constant(w_q, f"{node.name}_w_fp8"), x_q.producer().input(1), None,
              graph.constant(w_scale, f"{node.name}_w_scale"), None, layer.bias, layer.residual]
    return replace_nodes(graph, [node], op, inputs, dict(layer.attrs), "kiln")

"""Ops that keep fp32 math in fp16/bf16 engines unless a layer precision rule says otherwise.

The table holds what is unsafe by nature, not what happened to fail once:
- sums over many elements (large reductions, CumSum): each addition rounds to 11 (fp16) or
  8 (bf16) significant bits, so the error grows with the count and fp16 sums overflow at 65504;
- Exp and Pow of an unbounded input: fp16 overflows to inf for exp(x > 11.09) or 256**2, and
  bf16 keeps 3 significant digits of a result whose error grows with its magnitude. An input
  that a bounded op produced (Sigmoid, Tanh, Softmax ...) is safe, so those are left alone;
- a layer turning MatMulInteger's or ConvInteger's int32 sums into floats (their Cast, or an
  element-wise kernel holding it), and the layers reading such a Cast (the Mul by the scales, in
  ONNX Runtime's dynamic quantization): the sums reach millions, far past fp16's 65504 (inf, then
  NaN). passes/integer_to_qdq.py usually makes the whole chain one quantized layer; this covers
  the chains it leaves (a sum that is also a graph output).
A kept layer reads its float inputs through a Cast to fp32 and writes fp32: a consumer in the
reduced type casts back, so the win is the accumulation and range inside the layer (and
across a chain of kept layers, which stay fp32 end to end).

Not in the table, on purpose:
- Log: its result has a small range; the risk is an input that already underflowed, which
  fp32 math on the rounded input cannot undo.
- Softmax, LayerNormalization and kiln::Attention: their kernels already compute statistics
  (max, sum, mean, variance, softmax) in fp32 and round only the result (see
  KERNEL_FP32_STATISTICS), so converting them would cost two casts and gain nothing.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from kiln.ir.graph import Node

# Reductions over more elements than this keep fp32 math (when the count is known at build time).
LARGE_REDUCTION = 4096

_SUM = "sums {n} elements: fp16/bf16 additions lose low bits at every step and fp16 overflows at 65504"

# op -> why it keeps fp32 math (a template: {n} is the reduced element count for reductions)
FP32_MATH: Mapping[str, str] = MappingProxyType({
    "ReduceSum": _SUM,
    "ReduceMean": _SUM,
    "ReduceSumSquare": _SUM,
    "ReduceL2": _SUM,
    "ReduceLogSumExp": _SUM,
    "CumSum": "a running sum: rounding error accumulates along the axis at every step",
    "Exp": "exp of an unbounded input overflows fp16 above 11.09 and loses digits in bf16",
    "Pow": "a power of an unbounded input overflows fp16 (256**2 already does) and loses digits in bf16",
})

# ops whose kernels compute their statistics in fp32 already, so they follow the engine precision
KERNEL_FP32_STATISTICS: Mapping[str, str] = MappingProxyType({
    "Softmax": "max and sum of exponentials in fp32 (kernels/triton/softmax.py); only Y is rounded",
    "LayerNormalization": "mean and variance in fp32 (stash_type=1, kernels/triton/norm.py); only Y is rounded",
    "kiln::AddLayerNorm": "mean and variance in fp32 like LayerNormalization; only Y and the sum are rounded",
    "kiln::Attention": "scores and softmax in fp32 (kernels/reference/attention.py); only the output is rounded",
})

_REDUCTIONS = frozenset(op for op in FP32_MATH if op.startswith("Reduce"))
# ops whose outputs lie in a small known range: Exp/Pow of these cannot overflow
_BOUNDED = frozenset({"Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Sin", "Cos", "Erf", "HardSigmoid", "Clip"})


_INTEGER_SUMS = ("MatMulInteger", "ConvInteger")
_SUMS_CAST = ("turns (or reads what turned) MatMulInteger/ConvInteger int32 sums into floats: they exceed "
              "fp16's range (65504)")


def _converts_integer_sums(node: Node | None) -> bool:
    """`node` reads MatMulInteger/ConvInteger's int32 sums and writes floats."""
    if node is None or not any(o.dtype is not None and o.dtype.is_float for o in node.outputs):
        return False
    producers = (None if v is None else v.producer() for v in node.inputs)
    return any(p is not None and not p.domain and p.op in _INTEGER_SUMS for p in producers)


def fp32_reason(node: Node) -> str | None:
    """Why `node` should keep fp32 math in a reduced-precision engine, or None when it need not."""
    if _converts_integer_sums(node) or any(v is not None and _converts_integer_sums(v.producer()) for v in node.inputs):
        return _SUMS_CAST
    if node.domain or node.op not in FP32_MATH:
        return None
    if node.op in _REDUCTIONS:
        n = reduced_elements(node)
        return FP32_MATH[node.op].format(n=n) if n is not None and n > LARGE_REDUCTION else None
    if node.op in ("Exp", "Pow"):
        base = node.input(0)
        producer = None if base is None else base.producer()
        if producer is not None and not producer.domain and producer.op in _BOUNDED:
            return None
    return FP32_MATH[node.op]


def reduced_elements(node: Node) -> int | None:
    """How many elements each output element of a Reduce* node sums, or None when not known at build time.

    The importer normalizes axes to input 1 (onnx/normalize.py): absent means all axes, unless
    noop_with_empty_axes makes the node an identity (nothing is summed)."""
    x, axes_v = node.input(0), node.input(1)
    if x is None or x.shape is None:
        return None
    rank = len(x.shape)
    if axes_v is None or (axes_v.is_const and len(axes_v.const.reshape(-1)) == 0):
        if node.attrs.get("noop_with_empty_axes", 0):
            return 1
        axes = set(range(rank))
    elif axes_v.is_const:
        axes = {int(a) % rank if rank else 0 for a in axes_v.const.reshape(-1).tolist()}
    else:
        return None
    dims = [x.shape[a] for a in axes if a < rank]
    # only the reduced dims need be static: [batch, 8192] summed over axis 1 is known
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None

"""Quantize attention's Q, K and V to float8 codes (BuildConfig.quantize_attention, fp8 builds).

  X -> [Split] -> [S1 -> ... -> Sn] -> q, k, v -> kiln::Attention(q, k, v, mask, ...)
    ->  X -> QuantizeLinear(X, s_X -> float8_e4m3fn) -> [Split] -> [S1 -> ... -> Sn]
          -> kiln::Attention(q8, k8, v8, mask, ..., q_scale, k_scale, v_scale)

S1..Sn are shape ops (Transpose, Reshape, Flatten, Squeeze, Unsqueeze): a transformer's Q, K and V
are its projection's output split into three, reshaped to heads and transposed. Each value that
starts a chain (X: the projection's output, one for a merged Q/K/V projection) gets one per-tensor
scale s_X = amax_X / 448 from calibration, as precision/fp8.py quantizes a layer's input; the
attention dequantizes its codes with it (kernels/reference/fused.py: attention). The shape ops and
the Split then move float8 values, and fold_requantize folds the QuantizeLinear into X's producer
(a kiln::QMatMul writes the codes in its epilogue): the projection writes 8 bits instead of 16 and
the attention reads them (BERT-base b32: 9.4 MB of Q/K/V instead of 18.9 per layer; the Triton
kernels widen the codes in registers, kernels/triton/attention.py).

A float8 value keeps 3 significant bits wherever it lies in the range, so a scale shared by
Q, K and V (a merged projection's) loses only what falls below its smallest subnormal. What the
codes cost is precision: Q K^T and V carry float8's relative error (2^-4 at worst per element),
which is why this is an option and not what --fp8 does by default (`benchmarks/accuracy_real.py
--quantize-attention` measures it on real weights: MiniLM's worst cosine 0.9953 -> 0.9943).

When: q, k and v are float values, each read only by the attention (or by the next op of its
chain), none pinned (graph output, subgraph capture); each chain's start has a calibrated range
amax > 0; the attention has no code scales yet, and no --layer-precision rule keeps it wider (a
rule on the projection keeps that GEMM float, which then writes the codes: fuse_matmul_quantize).
A Split whose every output starts one of the three chains moves too (its input is then the one X);
otherwise each chain's start is its own X.
Run after quantize_fp8 and before fold_requantize (compiler/quantize_step.py).
"""
from __future__ import annotations

import math
import warnings
from typing import Collection, Mapping

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.fused import ATTENTION_INPUTS
from kiln.passes.match import live_ops, pinned, place_inputs, produced_by, sole_user
from kiln.precision.fp8 import FP8, quantize_input

SHAPE_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
CODE_SCALES = tuple(ATTENTION_INPUTS.index(n) for n in ("q_scale", "k_scale", "v_scale"))
FLOATS = (dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16)


class AttentionNotQuantizedWarning(UserWarning):
    """--quantize-attention left an attention's Q, K and V float (or the graph has no attention)."""


def quantize_attention_inputs(graph: Graph, ranges: Mapping[str, float], keep_float: Collection[int] = ()) -> int:
    """Give each attention that qualifies float8 Q, K and V (module docstring); the number done.
    `keep_float`: ids of nodes a --layer-precision rule keeps wider; such attentions keep float
    inputs. Warns (AttentionNotQuantizedWarning) when other attentions stay float, or there is none."""
    keep = pinned(graph)
    every = list(live_ops(graph, "kiln::Attention"))
    attentions = [n for n in every if id(n) not in keep_float]
    done = sum(_quantize(graph, node, ranges, keep) for node in attentions)
    if done < len(attentions) or not every:
        left = [n.name for n in attentions if n.input(CODE_SCALES[0]) is None]
        warnings.warn(f"--quantize-attention quantized the Q, K and V of {done} of {len(attentions)} attention(s)"
                      + (f"; {', '.join(left[:4])}{' ...' if len(left) > 4 else ''} keep float inputs: each of "
                         "Q, K and V must be read by the attention alone and come, through shape ops (and one "
                         "Split), from a tensor with a calibrated range" if left else
                         ": the model has no attention kiln fuses (kiln::Attention), so the option changes "
                         "nothing"), AttentionNotQuantizedWarning, stacklevel=2)
    return done


def _chain(v: Value, keep: set[int]) -> tuple[list[Node], Value]:
    """(the shape ops that make `v`, in order, the value they start from): each value after the
    start read once, by the next op, and not pinned."""
    ops: list[Node] = []
    while True:
        p = v.producer()
        if p is None or p.domain != "" or p.op not in SHAPE_OPS or len(p.outputs) != 1 or p.input(0) is None \
                or sole_user(p.input(0), keep) is not p:
            return ops[::-1], v
        ops.append(p)
        v = p.input(0)


def _quantize(graph: Graph, attention: Node, ranges: Mapping[str, float], keep: set[int]) -> bool:
    qkv = [attention.input(i) for i in range(3)]
    if any(attention.input(i) is not None for i in CODE_SCALES) or len(attention.outputs) != 1:
        return False
    if any(v is None or v.dtype not in FLOATS or sole_user(v, keep) is not attention for v in qkv):
        return False
    chains = [_chain(v, keep) for v in qkv]
    starts = [start for _, start in chains]
    moved = [op for ops, _ in chains for op in ops]
    readers = [ops[0] if ops else attention for ops, _ in chains]      # each start's reader on the way
    split = produced_by(starts[0], "Split")
    if split is not None and len(split.outputs) == 3 and {id(s) for s in starts} == {id(o) for o in split.outputs} \
            and all(sole_user(s, keep) is r for s, r in zip(starts, readers)):
        starts, readers, moved = [split.input(0)] * 3, [split] * 3, [split, *moved]
    amax = [ranges.get(x.name, 0.0) for x in starts]
    if not all(a > 0 and math.isfinite(a) for a in amax):
        return False
    codes: dict[int, Value] = {}
    for x, a, reader in zip(starts, amax, readers):
        if id(x) not in codes:
            codes[id(x)] = quantize_input(graph, x, a, before=reader)
            for node in {id(r): r for r, s in zip(readers, starts) if s is x}.values():
                node.set_inputs([codes[id(x)] if v is x else v for v in node.inputs])
    for node in moved:
        for out in node.outputs:
            out.dtype = FP8
    place_inputs(attention, {i: codes[id(x)].producer().input(1) for i, x in zip(CODE_SCALES, starts)})
    return True

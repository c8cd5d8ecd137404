"""Quantize attention's Q, K and V to 8-bit codes (BuildConfig.quantize_attention; int8, fp8 builds).

  X -> [Split] -> [S1 -> ... -> Sn] -> q, k, v -> kiln::Attention(q, k, v, mask, ...)
    ->  X -> QuantizeLinear(X, s -> T) -> [Split] -> [S1 -> ... -> Sn]
          -> kiln::Attention(q8, k8, v8, mask, ..., q_scale, k_scale, v_scale)

S1..Sn are shape ops (Transpose, Reshape, Flatten, Squeeze, Unsqueeze): a transformer's Q, K and V
are its projection's output split into three, reshaped to heads and transposed. T is the build's
8-bit type, and the scales come from calibration, as precision/int8.py and fp8.py quantize a
layer's input (symmetric: amax / 127, amax / 448):
- fp8: one per-tensor scale of X for Q, K and V (a float8 value keeps 3 significant bits wherever
  it lies in the range, so a shared scale loses only what falls below its smallest subnormal);
- int8: each of Q, K and V its own scale (int8's grid is uniform: V, often narrower than Q and K,
  would lose bits under theirs), so X's QuantizeLinear is per channel of its last axis, one block
  of channels per Split output (the Split's sizes, constant or equal parts; where they are not
  known, each Split output is quantized after the Split instead).
The attention dequantizes its codes with its three scales (kernels/reference/fused.py: attention).
The shape ops and the Split then move 8-bit values, and fold_requantize folds the QuantizeLinear
into X's producer (a kiln::QMatMul writes the codes in its epilogue, per column for int8's
blocks): the projection writes 8 bits instead of 16 and the attention reads them (BERT-base b32:
9.4 MB of Q/K/V instead of 18.9 per layer; the Triton kernels widen the codes in registers,
kernels/triton/attention.py).

What the codes cost is precision: Q K^T and V carry the 8-bit type's error (float8: 2^-4 of each
element at worst), which is why this is an option and not what --fp8/--int8 do by default
(`benchmarks/accuracy_real.py --quantize-attention` measures it on real weights: MiniLM fp8's
worst cosine 0.9953 -> 0.9943).

When: q, k and v are float values, each read only by the attention (or by the next op of its
chain), none pinned (graph output, subgraph capture); each chain's start has a calibrated range
amax > 0; the attention has no code scales yet, and no --layer-precision rule keeps it wider (a
rule on the projection keeps that GEMM float, which then writes the codes: fuse_matmul_quantize).
A Split whose every output starts one of the three chains moves too (its input is then the one X);
otherwise each chain's start is its own X.
Run after quantize_layers / quantize_fp8 and before fold_requantize (compiler/quantize_step.py).
"""
from __future__ import annotations

import math
import warnings
from typing import Collection, Mapping

import numpy as np

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.fused import ATTENTION_CODE_SCALES as CODE_SCALES
from kiln.passes.match import const_ints, live_ops, pinned, place_inputs, produced_by, sole_user
from kiln.precision.fp8 import quantize_input as quantize_fp8
from kiln.precision.int8 import input_scale, quantize_input as quantize_int8

SHAPE_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
FLOATS = (dtypes.FLOAT32, dtypes.FLOAT16, dtypes.BFLOAT16)


class AttentionNotQuantizedWarning(UserWarning):
    """--quantize-attention left an attention's Q, K and V float (or the graph has no attention)."""


def quantize_attention_inputs(graph: Graph, ranges: Mapping[str, float], keep_float: Collection[int] = (),
                              precision: str = "fp8") -> int:
    """Give each attention that qualifies 8-bit Q, K and V (module docstring); the number done.
    `keep_float`: ids of nodes a --layer-precision rule keeps wider; such attentions keep float
    inputs. Warns (AttentionNotQuantizedWarning) when other attentions stay float, or there is none."""
    keep = pinned(graph)
    every = list(live_ops(graph, "kiln::Attention"))
    attentions = [n for n in every if id(n) not in keep_float]
    done = sum(_quantize(graph, node, ranges, keep, precision) for node in attentions)
    left = [n.name for n in attentions if n.input(CODE_SCALES[0]) is None]   # a run before did the others
    if left or not every:
        warnings.warn(f"--quantize-attention quantized the Q, K and V of {len(attentions) - len(left)} of "
                      f"{len(attentions)} attention(s)"
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


def _quantize(graph: Graph, attention: Node, ranges: Mapping[str, float], keep: set[int], precision: str) -> bool:
    qkv = [attention.input(i) for i in range(3)]
    if any(attention.input(i) is not None for i in CODE_SCALES) or len(attention.outputs) != 1:
        return False
    if any(v is None or v.dtype not in FLOATS or sole_user(v, keep) is not attention for v in qkv):
        return False
    chains = [_chain(v, keep) for v in qkv]
    starts = [start for _, start in chains]
    moved = [op for ops, _ in chains for op in ops]
    readers = [ops[0] if ops else attention for ops, _ in chains]      # each start's reader on the way
    own = [ranges.get(x.name, 0.0) for x in starts]                    # each input's own range
    if not all(a > 0 and math.isfinite(a) for a in own):
        return False
    split = produced_by(starts[0], "Split")
    blocks = None
    if split is not None and len(split.outputs) == 3 and {id(s) for s in starts} == {id(o) for o in split.outputs} \
            and all(sole_user(s, keep) is r for s, r in zip(starts, readers)):
        blocks = _blocks(split) if precision == "int8" else ()
    if blocks is not None and (precision != "int8" or blocks):
        x = split.input(0)
        amax = ranges.get(x.name, 0.0)
        if precision == "fp8" and not (amax > 0 and math.isfinite(amax)):
            return False
        block_amax = [own[[id(s) for s in starts].index(id(o))] for o in split.outputs]   # in column order
        codes = quantize_fp8(graph, x, amax, before=split) if precision == "fp8" else \
            quantize_int8(graph, x, np.repeat(block_amax, blocks), before=split)
        split.set_inputs([codes, *split.inputs[1:]])
        moved = [split, *moved]
        scales = [codes.producer().input(1)] * 3 if precision == "fp8" else \
            [input_scale(graph, x, a, "_block_scale") for a in own]
    else:
        quantize = quantize_fp8 if precision == "fp8" else quantize_int8
        made: dict[int, Value] = {}
        for x, a, reader in zip(starts, own, readers):
            if id(x) not in made:
                made[id(x)] = quantize(graph, x, a, before=reader)
                for node in {id(r): r for r, s in zip(readers, starts) if s is x}.values():
                    node.set_inputs([made[id(x)] if v is x else v for v in node.inputs])
        codes = made[id(starts[0])]
        scales = [made[id(x)].producer().input(1) for x in starts]
    for node in moved:
        for out in node.outputs:
            out.dtype = codes.dtype
    place_inputs(attention, dict(zip(CODE_SCALES, scales)))
    return True


def _blocks(split: Node) -> tuple[int, ...]:
    """The sizes of a Split along the last axis of its input (constant sizes, or equal parts);
    () where they are not known."""
    x = split.input(0)
    rank = len(x.shape) if x.shape is not None else None
    axis = int(split.attrs.get("axis", 0))
    if rank is None or axis not in (-1, rank - 1) or not isinstance(x.shape[-1], int):
        return ()
    sizes = const_ints(split.input(1)) if split.input(1) is not None else list(split.attrs.get("split", ()))
    if not sizes:
        sizes = [x.shape[-1] // 3] * 3 if x.shape[-1] % 3 == 0 else []
    return tuple(sizes) if len(sizes) == 3 and sum(sizes) == x.shape[-1] else ()

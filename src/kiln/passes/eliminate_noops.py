"""Remove nodes that compute their input unchanged, and collapse layout chains.

  Identity(x), Dropout(x) at inference, Cast(x: T, to=T)         -> x
  Reshape(x, shape(x)), Expand(x, s) with s broadcast into x    -> x
  x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1 (same dtype, the constant
      broadcasts into x so the shape does not grow)              -> x
  Transpose(x, identity perm), Flatten(x: 2-D, axis=1)           -> x
  Transpose(Transpose(x, p1), p2)                                -> Transpose(x, p1[p2])
  Unsqueeze(Squeeze(x, a), a), Squeeze(Unsqueeze(x, a), a)       -> x
  Reshape(Reshape|Flatten(x), s), s without 0 (copy) entries     -> Reshape(x, s)

A removed node whose output is a graph output hands the output Value to the producer
of its input (see match.bypass), so output names survive. Repeats to a fixed point.
Shape-based rules need dtype/shape annotations; run fold_constants first so shape
inputs are constants.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kiln.ir.dtypes import from_onnx
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.shapes import Shape, is_static
from kiln.passes.match import bypass, const_array, const_ints, drop_if_dead, norm_axes, pinned, produced_by, rank

MAX_ROUNDS = 8


def eliminate_noops(graph: Graph) -> bool:
    """Bypass no-op nodes and compose Transpose/Reshape chains until nothing changes."""
    changed = False
    for _ in range(MAX_ROUNDS):
        keep = pinned(graph)
        round_changed = False
        for node in list(graph.nodes):
            if node.graph is not graph or node.domain != "":
                continue
            src = IDENTITIES[node.op](node) if node.op in IDENTITIES else None
            feeders = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
            if src is not None and bypass(graph, node, src, keep):
                # A cancelled pair (Squeeze->Unsqueeze) leaves its first half unread.
                for feeder in feeders:
                    drop_if_dead(graph, feeder, keep)
                round_changed = True
            elif node.op in REWRITES and REWRITES[node.op](graph, node, keep):
                round_changed = True
        if not round_changed:
            break
        changed = True
    return changed


def _broadcasts_into(small: Shape, big: Shape) -> bool:
    """True when broadcasting `small` against `big` yields exactly `big`."""
    if len(small) > len(big):
        return False
    return all(s == 1 or s == b for s, b in zip(small[::-1], big[::-1]))


def _dropout(node: Node) -> Value | None:
    training = const_array(node.input(2))
    if node.input(2) is not None and (training is None or bool(training.reshape(-1)[0])):
        return None
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return None
    return node.input(0)


def _cast(node: Node) -> Value | None:
    x = node.input(0)
    return x if x.dtype is not None and from_onnx(int(node.attrs["to"])) == x.dtype else None


def _cast_like(node: Node) -> Value | None:
    x, like = node.input(0), node.input(1)
    return x if x.dtype is not None and x.dtype == like.dtype else None


def _reshape(node: Node) -> Value | None:
    x, out = node.input(0), node.outputs[0]
    if is_static(x.shape) and (x.shape == out.shape or const_ints(node.input(1)) == list(x.shape)):
        return x
    return None


def _expand(node: Node) -> Value | None:
    x, shape = node.input(0), const_ints(node.input(1))
    if x.shape is None or shape is None:
        return None
    return x if _broadcasts_into(tuple(shape), x.shape) else None


def _neutral_operand(node: Node) -> Value | None:
    neutral = 0 if node.op in ("Add", "Sub") else 1
    pairs = [(node.input(0), node.input(1))]
    if node.op in ("Add", "Mul"):
        pairs.append((node.input(1), node.input(0)))
    for x, c in pairs:
        arr = const_array(c)
        if arr is None or x.shape is None or x.dtype is None or x.dtype != c.dtype:
            continue
        if np.all(arr == neutral) and _broadcasts_into(arr.shape, x.shape):
            return x
    return None


def _perm(node: Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    r = rank(node.input(0))
    return None if r is None else list(reversed(range(r)))


def _transpose(node: Node) -> Value | None:
    perm = _perm(node)
    return node.input(0) if perm is not None and perm == list(range(len(perm))) else None


def _flatten(node: Node) -> Value | None:
    x = node.input(0)
    return x if rank(x) == 2 and node.attrs.get("axis", 1) in (1, -1) else None


def _axes(node: Node) -> list[int] | None:
    if node.input(1) is not None:
        return const_ints(node.input(1))
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(node: Node) -> Value | None:
    squeeze = produced_by(node.input(0), "Squeeze")
    if squeeze is None or rank(squeeze.input(0)) is None:
        return None
    x = squeeze.input(0)
    r = rank(x)
    squeezed = _axes(squeeze)
    if squeezed is None:
        # No axes: every size-1 dim goes; that set must be known exactly.
        if not all(isinstance(d, int) for d in x.shape):
            return None
        squeezed = [i for i, d in enumerate(x.shape) if d == 1]
    unsqueezed = _axes(node)
    if unsqueezed is None:
        return None
    return x if norm_axes(squeezed, r) == norm_axes(unsqueezed, r) else None


def _squeeze(node: Node) -> Value | None:
    unsqueeze = produced_by(node.input(0), "Unsqueeze")
    if unsqueeze is None:
        return None
    x, added, removed = unsqueeze.input(0), _axes(unsqueeze), _axes(node)
    if rank(x) is None or added is None or removed is None:
        return None
    r = rank(x) + len(added)
    return x if norm_axes(added, r) == norm_axes(removed, r) else None


IDENTITIES: dict[str, Callable[[Node], Value | None]] = {
    "Identity": lambda node: node.input(0),
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Expand": _expand,
    "Add": _neutral_operand,
    "Sub": _neutral_operand,
    "Mul": _neutral_operand,
    "Div": _neutral_operand,
    "Transpose": _transpose,
    "Flatten": _flatten,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
}


def _compose_transposes(graph: Graph, node: Node, keep: set[int]) -> bool:
    inner = produced_by(node.input(0), "Transpose")
    if inner is None:
        return False
    p1, p2 = _perm(inner), _perm(node)
    if p1 is None or p2 is None:
        return False
    # out[i] = mid[p2[i]] = x[p1[p2[i]]]
    node.attrs["perm"] = [p1[j] for j in p2]
    node.set_input(0, inner.input(0))
    drop_if_dead(graph, inner, keep)
    return True


def _collapse_reshapes(graph: Graph, node: Node, keep: set[int]) -> bool:
    inner = produced_by(node.input(0), "Reshape", "Flatten")
    shape = const_ints(node.input(1))
    if inner is None or shape is None:
        return False
    # A 0 entry copies a dim of the Reshape's own input, which the collapse changes.
    if 0 in shape and not node.attrs.get("allowzero", 0):
        return False
    node.set_input(0, inner.input(0))
    drop_if_dead(graph, inner, keep)
    return True


REWRITES: dict[str, Callable[[Graph, Node, set[int]], bool]] = {
    "Transpose": _compose_transposes,
    "Reshape": _collapse_reshapes,
}

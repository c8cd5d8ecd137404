"""Turn symbolic dims that the graph itself fixes into static ones.

ONNX shape inference propagates constants through shape arithmetic only partly (its data
propagation has no Div), so an exporter's `C // heads` leaves the head size symbolic:
  Reshape(qkv, Concat(batch, 197, 3, 12, Div(Gather(Shape(x), 2), 12)))  ->  [B, 197, 3, 12, ?]
Once fold_constants has folded the Div branch, the shape input holds constants in every
position but the batch, and this pass writes them into the output's dims. It then carries
static dims forward through the ops that only move dims (Transpose, Squeeze, Unsqueeze,
Slice and Gather on other axes, element-wise unary ops), so that Shape(...) of a head tensor folds and
the attention scale sqrt(head size) becomes a constant the attention matcher can read.

Sound by construction: a dim is refined only from what the op's definition fixes (a
positive constant entry of a Reshape shape, a permutation, ...); a symbolic dim becomes an
int, an int is never changed, and a rank is never changed. Part of the cleanup loop: each
refinement can let fold_constants fold more.
"""
from __future__ import annotations

from typing import Callable

from kiln.ir.graph import Graph, Node, Value
from kiln.ir.shapes import Shape
from kiln.passes.match import const_ints, live_nodes

UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Identity",
                   "Cast", "Softmax", "LeakyRelu", "Clip", "Reciprocal", "Floor", "Ceil", "Round", "Sign"})


def refine_shapes(graph: Graph) -> bool:
    changed = False
    for node in live_nodes(graph):
        rule = RULES.get(node.op) or (_same_as_input if node.op in UNARY else None)
        if rule is None or not node.outputs or node.outputs[0].shape is None or node.input(0) is None:
            continue
        dims = rule(node)
        if dims is not None:
            changed |= _refine(node.outputs[0], dims)
    return changed


def _refine(v: Value, dims: Shape) -> bool:
    """Write the int dims of `dims` into v's symbolic ones (same rank only); True if any changed."""
    old = v.shape
    if old is None or len(old) != len(dims):
        return False
    new = tuple(d if isinstance(d, int) else (n if isinstance(n, int) and n >= 0 else d) for d, n in zip(old, dims))
    if new == tuple(old):
        return False
    v.shape = new
    return True


def _reshape(node: Node) -> Shape | None:
    """Positive constant entries of the shape input (a constant, or a Concat of parts)."""
    target = node.input(1)
    if target is None:
        return None
    whole = const_ints(target)
    if whole is not None:
        return tuple(d if d > 0 else "?" for d in whole)
    producer = target.producer()
    if producer is None or producer.op != "Concat" or producer.domain != "":
        return None
    dims: list[int | str] = []
    for part in producer.inputs:
        if part is None or part.shape is None or len(part.shape) != 1 or not isinstance(part.shape[0], int):
            return None
        values = const_ints(part)
        dims += [d if d > 0 else "?" for d in values] if values is not None else ["?"] * part.shape[0]
    return tuple(dims)


def _transpose(node: Node) -> Shape | None:
    x = node.input(0).shape
    if x is None:
        return None
    perm = node.attrs.get("perm") or list(reversed(range(len(x))))
    return tuple(x[p] for p in perm) if len(perm) == len(x) else None


def _squeeze(node: Node) -> Shape | None:
    x = node.input(0).shape
    axes = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("axes")
    if x is None or axes is None:
        return None
    drop = {a + len(x) if a < 0 else a for a in axes}
    return tuple(d for i, d in enumerate(x) if i not in drop)


def _unsqueeze(node: Node) -> Shape | None:
    x = node.input(0).shape
    axes = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("axes")
    if x is None or axes is None:
        return None
    rank = len(x) + len(axes)
    ones = {a + rank if a < 0 else a for a in axes}
    it = iter(x)
    return tuple(1 if i in ones else next(it) for i in range(rank))


def _slice(node: Node) -> Shape | None:
    """Dims of the axes the Slice does not cut (the cut ones stay as they are)."""
    x = node.input(0).shape
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    starts = const_ints(node.input(1))
    if x is None or starts is None:
        return None
    cut = {a + len(x) if a < 0 else a for a in (axes if axes is not None else range(len(starts)))}
    return tuple("?" if i in cut else d for i, d in enumerate(x))


def _gather(node: Node) -> Shape | None:
    """data[..., indices, ...] along `axis`: the other axes' dims, the indices' shape in between."""
    x, idx = node.input(0).shape, node.input(1).shape if node.input(1) is not None else None
    if x is None or idx is None:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(x) if axis < 0 else axis
    return (*x[:axis], *idx, *x[axis + 1:])


def _same_as_input(node: Node) -> Shape | None:
    return node.input(0).shape


RULES: dict[str, Callable[[Node], Shape | None]] = {
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Gather": _gather,
}

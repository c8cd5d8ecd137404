"""Recognise LayerNorm as torch exports it, decomposed.

  d = x - ReduceMean(x, axes)                      axes: the trailing k dims
  v = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
  y = d / Sqrt(v + eps)  |  d * Reciprocal(Sqrt(v + eps))
  y * gamma + beta     -> LayerNormalization(x, gamma, beta, axis=-k, epsilon=eps)
gamma and beta are optional (then ones / no bias; ones need static normalized dims).
Intermediates must be read only inside the pattern. Run fold_constants first (the
axes, exponent and eps must be constants).
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import (const_array, live_nodes, new_const, only_read_by, other_input, pinned,
                               produced_by, rank, reduce_axes, replace_nodes, scalar_const, sole_user)


def fuse_layernorm(graph: Graph) -> bool:
    """Replace each decomposed LayerNorm (see module docstring) by LayerNormalization."""
    keep = pinned(graph)
    changed = False
    for node in live_nodes(graph, "Div", "Mul"):
        changed |= _try(graph, node, keep)
    return changed


def _trailing_axes(node: Node, x: Value) -> int | None:
    """k when `node` is a keepdims ReduceMean of x over its last k axes."""
    axes = reduce_axes(node)
    if axes is None or not axes or not node.attrs.get("keepdims", 1):
        return None
    r = rank(x)
    if r is None:
        if not all(a < 0 for a in axes):
            return None
        norm, r = sorted(axes), 0
    else:
        norm = sorted(a % r for a in axes)
    k = len(norm)
    return k if norm == list(range(r - k, r)) else None


def _try(graph: Graph, div: Node, keep: set[int]) -> bool:
    """Match backwards from `div` = d / std, then forwards over gamma and beta."""
    d, std = div.input(0), div.input(1)
    recip = None
    if div.op == "Mul":  # d * Reciprocal(Sqrt(...)), either operand order
        recip = produced_by(std, "Reciprocal") or produced_by(d, "Reciprocal")
        if recip is None:
            return False
        std = recip.outputs[0]
        d = other_input(div, std)
        std = recip.input(0)
    sqrt = produced_by(std, "Sqrt")
    add = produced_by(sqrt.input(0), "Add") if sqrt else None
    var_v = next((v for v in (add.inputs if add else ()) if produced_by(v, "ReduceMean")), None)
    sub = produced_by(d, "Sub")
    if var_v is None or sub is None:
        return False
    eps = scalar_const(other_input(add, var_v))
    var_mean = var_v.producer()
    square = produced_by(var_mean.input(0), "Pow", "Mul")
    x, mean_v = sub.input(0), sub.input(1)
    mean = produced_by(mean_v, "ReduceMean")
    if eps is None or square is None or mean is None or mean.input(0) is not x:
        return False
    is_square = (square.op == "Pow" and square.input(0) is d and scalar_const(square.input(1)) == 2.0) or \
        (square.op == "Mul" and square.input(0) is d and square.input(1) is d)
    k = _trailing_axes(mean, x)
    if not is_square or k is None or _trailing_axes(var_mean, x) != k:
        return False
    core = [mean, sub, square, var_mean, add, sqrt, *([recip] if recip else []), div]
    inner = core[:-1]
    if not all(only_read_by(n.outputs[0], core, keep) for n in inner):
        return False
    return _replace(graph, x, k, eps, core, keep)


def _affine(v: Value, op: str, keep: set[int], k: int) -> tuple[Node, Value] | None:
    """(node, param) when v's sole reader is `op` with a parameter over the last k dims."""
    user = sole_user(v, keep)
    if user is None or user.domain != "" or user.op != op:
        return None
    p = other_input(user, v)
    if p is None or p.shape is None or p.dtype != v.dtype:
        return None
    dims = list(p.shape)
    while dims and dims[0] == 1 and len(dims) > k:
        dims.pop(0)
    return (user, p) if len(dims) <= k else None


def _replace(graph: Graph, x: Value, k: int, epsilon: float, core: list[Node], keep: set[int]) -> bool:
    nodes = list(core)
    out = core[-1].outputs[0]
    gamma = beta = None
    if (scaled := _affine(out, "Mul", keep, k)) is not None:
        nodes.append(scaled[0])
        gamma, out = scaled[1], scaled[0].outputs[0]
        if (shifted := _affine(out, "Add", keep, k)) is not None:
            nodes.append(shifted[0])
            beta = shifted[1]
    if gamma is None:
        dims = x.shape[-k:] if x.shape is not None else None
        eps = other_input(core[4], core[3].outputs[0])
        if dims is None or not all(isinstance(d, int) for d in dims) or eps is None:
            return False
        gamma = new_const(graph, np.ones(dims), eps.const, "ln_scale")
    gamma, beta = _squeezed(graph, gamma, k), _squeezed(graph, beta, k) if beta is not None else None
    replace_nodes(graph, nodes, "LayerNormalization", [x, gamma, beta], {"axis": -k, "epsilon": float(epsilon)})
    return True


def _squeezed(graph: Graph, v: Value, k: int) -> Value:
    """A constant parameter with its leading ones dropped down to rank k (the spec's shape)."""
    arr = const_array(v)
    if arr is None or arr.ndim <= k:
        return v
    return new_const(graph, arr.reshape(arr.shape[arr.ndim - k:]), v.const, v.name)


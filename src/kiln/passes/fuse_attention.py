"""Recognise scaled dot-product attention over [B, H, S, D].

  MatMul(Softmax(MatMul(q, K^T) * c (+ mask), axis=-1), v)
      -> kiln::Attention(q, k, v, mask, scale=c)
K^T is Transpose(k, [0, 1, 3, 2]) (absorbed), another Transpose (composed with the
swap into one that yields k) or any [B, H, D, Skv] value (a Transpose is inserted so
Attention reads [B, H, Skv, D]). The scale is a Mul or Div by a scalar
constant on the scores, or split over q and k as some exporters do
(q * c1) @ (k * c2)^T, or absent (scale 1). The mask must be added after the scale and
must not widen the scores. Every intermediate must be read only inside the pattern.
Run fold_constants and fuse_softmax first; run before fuse_epilogues and fuse_pointwise.
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import (live_nodes, only_read_by, pinned, produced_by, rank, replace_nodes,
                               scalar_const, sole_user)

SWAP_LAST = [0, 1, 3, 2]


def fuse_attention(graph: Graph) -> bool:
    """Replace each attention pattern (see module docstring) by kiln::Attention."""
    keep = pinned(graph)
    changed = False
    for node in live_nodes(graph, "MatMul"):
        changed |= _try(graph, node, keep)
    return changed


def _scalar_scale(v: Value, keep: set[int]) -> tuple[Value, float, Node] | None:
    """(x, c, node) when v = x * c or x / (1 / c) for a scalar constant, v read once."""
    node = produced_by(v, "Mul", "Div")
    if node is None or sole_user(v, keep) is None:
        return None
    a, b = node.input(0), node.input(1)
    if node.op == "Div":
        c = scalar_const(b)
        return None if c is None or c == 0 else (a, 1.0 / c, node)
    for x, other in ((a, b), (b, a)):
        c = scalar_const(other)
        if c is not None:
            return x, c, node
    return None


def _peel(v: Value, keep: set[int], nodes: list[Node]) -> tuple[Value, float]:
    """Strip one scalar scaling off v (an operand of Q @ K^T)."""
    found = _scalar_scale(v, keep)
    if found is None:
        return v, 1.0
    nodes.append(found[2])
    return found[0], found[1]


def _try(graph: Graph, out_mm: Node, keep: set[int]) -> bool:
    probs, v = out_mm.input(0), out_mm.input(1)
    softmax = produced_by(probs, "Softmax")
    if softmax is None or softmax.attrs.get("axis", -1) not in (-1, 3) or rank(probs) != 4:
        return False
    nodes = [softmax, out_mm]
    scores, mask = softmax.input(0), None
    add = produced_by(scores, "Add")
    if add is not None:
        scores, mask = _split_mask(add)
        if scores is None or not _mask_fits(scores, mask):
            return False
        nodes.append(add)
    scores, scale = _peel(scores, keep, nodes)
    qk = produced_by(scores, "MatMul")
    if qk is None:
        return False
    nodes.append(qk)
    q, q_scale = _peel(qk.input(0), keep, nodes)
    kt, kt_scale = _peel(qk.input(1), keep, nodes)
    scale *= q_scale * kt_scale
    transpose = produced_by(kt, "Transpose")
    k, k_perm = None, SWAP_LAST  # k = Transpose(k_src, k_perm)
    if transpose is not None and len(transpose.attrs.get("perm") or []) == 4 and sole_user(kt, keep) is not None:
        # kt = Transpose(y, p) => k = Transpose(y, p[SWAP_LAST]), often the identity.
        nodes.append(transpose)
        kt, k_scale = _peel(transpose.input(0), keep, nodes)
        scale *= k_scale
        k_perm = [transpose.attrs["perm"][j] for j in SWAP_LAST]
        if k_perm == [0, 1, 2, 3]:
            k = kt
    if not all(rank(t) == 4 for t in (q, kt, v)) or scale == 0.0:
        return False
    if not all(only_read_by(n.outputs[0], nodes, keep) for n in nodes if n is not out_mm):
        return False
    if k is None:
        k = _transposed(graph, kt, k_perm, out_mm)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    replace_nodes(graph, sorted(nodes, key=lambda n: order[id(n)]), "Attention", [q, k, v, mask],
                  {"scale": float(scale), "is_causal": 0}, "kiln")
    return True


def _split_mask(add: Node) -> tuple[Value | None, Value | None]:
    """(scores, mask) of Add(scores, mask): the scores come from the Q @ K^T chain."""
    for scores, mask in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        if produced_by(scores, "MatMul", "Mul", "Div") is not None:
            return scores, mask
    return None, None


def _mask_fits(scores: Value, mask: Value | None) -> bool:
    """True when adding `mask` cannot widen the scores: each static mask dim above 1 meets
    an equal or symbolic scores dim (shape inference names unknown dims with fresh symbols,
    so symbolic dims cannot be compared; attention scores are [B, H, S, Skv] in full)."""
    if mask is None or scores.shape is None or mask.shape is None or len(mask.shape) > len(scores.shape):
        return False
    for m, s in zip(reversed(mask.shape), reversed(scores.shape)):
        if isinstance(m, int) and m != 1 and isinstance(s, int) and s != m:
            return False
        if isinstance(s, int) and s == 1 and m != 1:
            return False
    return True


def _transposed(graph: Graph, src: Value, perm: list[int], before: Node) -> Value:
    """k [B, H, Skv, D] as Transpose(src, perm)."""
    node = graph.make_node("Transpose", [src], attrs={"perm": [int(p) for p in perm]}, before=before)
    out = node.outputs[0]
    out.dtype = src.dtype
    out.shape = tuple(src.shape[i] for i in perm)
    return out

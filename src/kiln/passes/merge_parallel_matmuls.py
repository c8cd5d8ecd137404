"""Merge matmuls that read the same input with constant weights into one wider matmul.

  y_i = act(A @ W_i + b_i)   for i = 1..n, same A, same act, W_i constant [K, N_i]
      -> Y = kiln::FusedMatMul(A, [W_1 | ... | W_n], [b_1 | ... | b_n], activation=act)
         y_1, ..., y_n = Split(Y, [N_1, ..., N_n], axis=-1)

Attention's query, key and value projections are the case that matters: three GEMMs of
[tokens, K] x [K, N] become one of [tokens, K] x [K, 3N], which fills the GPU better at
small batch and launches one kernel instead of three. The Split's outputs are views of Y
(columns of each row), and the Reshape/Transpose that follow a projection stay views, so
nothing is copied. A missing bias among biased members is a zero block of the merged bias.

Members: MatMul with a constant 2-D B, and kiln::FusedMatMul with a constant 2-D B,
trans_b 0, alpha 1 and no residual, grouped by (activation, parameters, K, dtype). Run
after fuse_epilogues (biases and activations are inside the FusedMatMuls by then).
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import const_array, new_const

MIN_GROUP = 2


def merge_parallel_matmuls(graph: Graph) -> bool:
    changed = False
    for a in list(graph.values()):
        if a.is_const:
            continue
        groups: dict[tuple, list[Node]] = {}
        for node in a.consumers():
            key = _key(node, a)
            if key is not None and node.graph is graph:
                groups.setdefault(key, []).append(node)
        for key, members in groups.items():
            if len(members) >= MIN_GROUP:
                _merge(graph, a, members, key)
                changed = True
    return changed


def _key(node: Node, a: Value) -> tuple | None:
    """What members must share to merge (None: `node` cannot be a member)."""
    if node.input(0) is not a or any(v is a for v in node.inputs[1:]):
        return None
    w = node.input(1)
    if w is None or not w.is_const or w.shape is None or len(w.shape) != 2 or len(node.outputs) != 1:
        return None
    if node.domain == "" and node.op == "MatMul":
        return ("", (), w.shape[0], w.dtype)
    if node.domain == "kiln" and node.op == "FusedMatMul":
        if (int(node.attrs.get("trans_b", 0)) != 0 or float(node.attrs.get("alpha", 1.0)) != 1.0
                or node.input(3) is not None):
            return None
        bias = node.input(2)
        if bias is not None and (not bias.is_const or bias.shape is None or tuple(bias.shape) != (w.shape[1],)):
            return None
        act = node.attrs.get("activation", "")
        return (act, tuple(float(p) for p in node.attrs.get("activation_params", ())), w.shape[0], w.dtype)
    return None


def _merge(graph: Graph, a: Value, members: list[Node], key: tuple) -> None:
    activation, params = key[0], list(key[1])
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    members.sort(key=lambda n: order[id(n)])
    weights = [n.input(1) for n in members]
    widths = [int(w.shape[1]) for w in weights]
    w_like = weights[0].const
    w_cat = new_const(graph, np.concatenate([const_array(w) for w in weights], axis=1), w_like, "merged_weight")
    biases = [n.input(2) if n.domain == "kiln" and len(n.inputs) > 2 else None for n in members]
    b_cat = None
    if any(b is not None for b in biases):
        like = next(b for b in biases if b is not None).const
        parts = [const_array(b) if b is not None else np.zeros(n, dtype=np.float64) for b, n in zip(biases, widths)]
        b_cat = new_const(graph, np.concatenate([p.astype(np.float64) for p in parts]), like, "merged_bias")
    outs = [n.outputs[0] for n in members]
    first = members[0]
    at = order[id(first)]
    fused_from = tuple(name for n in members for name in (n.fused_from or (n.name,)))
    graph.remove_nodes(members)
    anchor = graph.nodes[at] if at < len(graph.nodes) else None
    y = graph.value("merged_matmul", outs[0].dtype,
                    None if outs[0].shape is None else (*outs[0].shape[:-1], sum(widths)))
    mm = Node("FusedMatMul", [a, w_cat, b_cat], [y], {"activation": activation, "activation_params": params,
                                                      "alpha": 1.0, "trans_b": 0},
              name=graph.unique_name("FusedMatMul"), domain="kiln")
    mm.fused_from = fused_from
    graph.add_node(mm, before=anchor)
    split = Node("Split", [y, graph.constant(np.asarray(widths, dtype=np.int64), "split_sizes")], outs,
                 {"axis": -1}, name=graph.unique_name("Split"))
    split.fused_from = fused_from
    graph.add_node(split, before=anchor)

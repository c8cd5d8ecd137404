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

Explicitly quantized projections (a QAT export's Q/K/V: kiln::QMatMul from fuse_qdq) merge the same
way into one kiln::QMatMul: members read the same codes A with equal per-tensor a_scale and a_zp
(constants, or the same values computed at run time: dynamic quantization's), have a constant 2-D
int8, uint8 or float8 B of one type (trans_b 0), constant weight scales and zero points, no residual, and the same
activation and output type, and all or none a mid quantization (ONNX Runtime's MatMul -> Q -> DQ ->
Add(bias), fuse_qdq_bias) with zero points of one type; weight scales (and zero points, biases,
output and mid scales and zero points) are concatenated per column, a per-tensor one repeated over
its member's columns, so each column computes exactly what its member did.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.quantized import QMATMUL_INPUTS
from kiln.passes.fuse_qdq import LAYER_INPUTS
from kiln.passes.match import const_array, new_const

MIN_GROUP = 2
QUANTIZED = "kiln::QMatMul"   # the first element of a quantized member's key
_Q = {name: i for i, name in enumerate(QMATMUL_INPUTS)}


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
                (_merge_quantized if key[0] == QUANTIZED else _merge)(graph, a, members, key)
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
    if node.domain == "kiln" and node.op == "QMatMul":
        return _quantized_key(node, w)
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
    _replace_by_split(graph, members, order, "FusedMatMul", [a, w_cat, b_cat],
                      {"activation": activation, "activation_params": params, "alpha": 1.0, "trans_b": 0}, widths)


def _replace_by_split(graph: Graph, members: list[Node], order: dict[int, int], op: str,
                      inputs: list[Value | None], attrs: dict, widths: list[int]) -> None:
    """Replace `members` by one kiln `op` node on `inputs` whose output Split gives back each
    member's output (the Split's outputs are the members' output Values: names and readers kept)."""
    outs = [n.outputs[0] for n in members]
    at = order[id(members[0])]
    fused_from = tuple(name for n in members for name in (n.fused_from or (n.name,)))
    graph.remove_nodes(members)
    anchor = graph.nodes[at] if at < len(graph.nodes) else None
    y = graph.value("merged_matmul", outs[0].dtype,
                    None if outs[0].shape is None else (*outs[0].shape[:-1], sum(widths)))
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    mm = Node(op, inputs, [y], attrs, name=graph.unique_name(op), domain="kiln")
    mm.fused_from = fused_from
    graph.add_node(mm, before=anchor)
    split = Node("Split", [y, graph.constant(np.asarray(widths, dtype=np.int64), "split_sizes")], outs,
                 {"axis": -1}, name=graph.unique_name("Split"))
    split.fused_from = fused_from
    graph.add_node(split, before=anchor)


def _scalar(v: Value | None) -> float | None:
    """A one-element constant's value (0.0 for an absent zero point); None otherwise."""
    if v is None:
        return 0.0
    arr = const_array(v)
    return None if arr is None or arr.size != 1 else float(arr.reshape(-1)[0])


def _per_column(v: Value | None, n: int) -> bool:
    """Absent, or a constant of one element or of n (one per column)."""
    arr = const_array(v) if v is not None else None
    return v is None or (arr is not None and arr.size in (1, n))


# the codes a quantized layer reads, B's too (uint8: quantize_dynamic's QUInt8 weights, zero points per member)
WEIGHT_CODES = LAYER_INPUTS


def _quantized_key(node: Node, w: Value) -> tuple | None:
    """A kiln::QMatMul member's key (module docstring), or None."""
    n = int(w.shape[1])
    a_scale, a_zp = node.input(_Q["a_scale"]), node.input(_Q["a_zp"])
    # run-time parameters (kiln::QMatMul's dynamic): equal where they are the same values
    a_params = ("run time", id(a_scale), id(a_zp)) if node.attrs.get("dynamic") else (_scalar(a_scale), _scalar(a_zp))
    requant = node.input(_Q["out_scale"]) is not None
    if int(node.attrs.get("trans_b", 0)) or w.dtype is None or w.dtype.name not in WEIGHT_CODES \
            or None in a_params or node.input(_Q["residual"]) is not None:
        return None
    if not all(_per_column(node.input(_Q[k]), n)
               for k in ("b_scale", "b_zp", "out_scale", "out_zp", "mid_scale", "mid_zp")):
        return None
    mid, mid_zp = node.input(_Q["mid_scale"]), node.input(_Q["mid_zp"])
    bias = node.input(_Q["bias"])
    if node.input(_Q["b_scale"]) is None or (bias is not None and (const_array(bias) is None or
                                                                   const_array(bias).size != n)):
        return None
    zp_type = node.input(_Q["a_zp"]).dtype.name if node.input(_Q["a_zp"]) is not None else None
    params = tuple(float(p) for p in node.attrs.get("activation_params", ()))
    return (QUANTIZED, w.dtype.name, node.attrs.get("activation", ""), params, w.shape[0], a_params, zp_type,
            requant, int(node.attrs.get("out_dtype", 0)), node.input(_Q["out_zp"]) is not None,
            mid is not None, None if mid_zp is None else mid_zp.dtype.name)


def _merge_quantized(graph: Graph, a: Value, members: list[Node], key: tuple) -> None:
    """One kiln::QMatMul for `members` (module docstring), its columns split back to their outputs."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    members.sort(key=lambda n: order[id(n)])
    widths = [int(n.input(1).shape[1]) for n in members]
    first = members[0]

    def columns(name: str, hint: str) -> Value | None:
        values = [n.input(_Q[name]) for n in members]
        if all(v is None for v in values):
            return None
        like = next(v for v in values if v is not None).const
        parts = [np.zeros(w) if v is None else np.broadcast_to(const_array(v).astype(np.float64).reshape(-1), (w,))
                 for v, w in zip(values, widths)]
        return new_const(graph, np.concatenate(parts), like, hint)

    weight = np.concatenate([const_array(n.input(1)) for n in members], axis=1)
    inputs: list[Value | None] = [a, new_const(graph, weight, first.input(1).const, "merged_weight"),
                                  first.input(_Q["a_scale"]), first.input(_Q["a_zp"]),
                                  columns("b_scale", "merged_weight_scale"), columns("b_zp", "merged_weight_zp"),
                                  columns("bias", "merged_bias"), None,
                                  columns("out_scale", "merged_out_scale"), columns("out_zp", "merged_out_zp"),
                                  columns("mid_scale", "merged_mid_scale"), columns("mid_zp", "merged_mid_zp")]
    _replace_by_split(graph, members, order, "QMatMul", inputs, dict(first.attrs), widths)

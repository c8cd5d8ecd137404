"""Fuse the residual add in front of a LayerNormalization into one kiln::AddLayerNorm.

  LayerNormalization(kiln::FusedMatMul(a, W, bias, r))   (no activation)
      -> kiln::AddLayerNorm(kiln::FusedMatMul(a, W, bias), r, scale, B)
  LayerNormalization(Add(x, r))                          x, r of the same shape
      -> kiln::AddLayerNorm(x, r, scale, B)
kiln::AddLayerNorm returns (Y, Sum). When the sum has readers besides the normalisation
(pre-norm transformers carry it on as the residual stream) or is a graph output, Sum
takes over the sum's Value; otherwise the node has the one output Y.

Why. A transformer block ends `LayerNorm(x @ W + b + r)`. Left as it is, the GEMM's
residual epilogue is an extra pass over the output (cuBLAS fuses the bias but not a
residual beside it) and LayerNorm one more: write, read+read+write, read+write. Fused,
the GEMM keeps only its free bias epilogue and one row-wise kernel reads the GEMM output
and r and writes Y (and Sum when it is needed): the same work in two fewer passes.

Only LayerNormalization nodes whose Mean/InvStdDev outputs are unused and whose stash
type is float32 match (the fused kernels compute statistics in float32 and return Y).
Run after fuse_epilogues (it reads their residual inputs) and before fuse_pointwise
(which would take the Add).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import live_nodes, pinned


def fuse_add_layernorm(graph: Graph) -> bool:
    keep = pinned(graph)
    changed = False
    for ln in live_nodes(graph, "LayerNormalization"):
        if int(ln.attrs.get("stash_type", 1)) != 1 or any(o.uses() or id(o) in keep for o in ln.outputs[1:]):
            continue
        x = ln.input(0)
        producer = x.producer() if x is not None else None
        if producer is None or producer.graph is not graph:
            continue
        operands = _operands(producer, x)
        if operands is None:
            continue
        changed |= _rewrite(graph, ln, producer, x, *operands, keep)
    return changed


def _same_known_shape(a: Value | None, b: Value | None) -> bool:
    """Same dtype and the same dims (a symbolic dim matches only itself: the same name is the same size)."""
    return (a is not None and b is not None and a.shape is not None and b.shape is not None
            and tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype)


def _operands(producer: Node, x: Value) -> tuple[Value | None, Value] | None:
    """(the addend that stays, or None for a FusedMatMul's own result; the residual)."""
    if producer.domain == "kiln" and producer.op == "FusedMatMul":
        r = producer.input(3)
        if r is None or producer.attrs.get("activation", "") or not _same_known_shape(r, x):
            return None
        return None, r
    if producer.domain == "" and producer.op == "Add" and len(producer.inputs) == 2:
        a, r = producer.inputs
        if a is None or r is None or a.is_const or r.is_const:
            return None
        return (a, r) if _same_known_shape(a, x) and _same_known_shape(r, x) else None
    return None


def _rewrite(graph: Graph, ln: Node, producer: Node, s: Value, addend: Value | None, r: Value,
             keep: set[int]) -> bool:
    sum_needed = id(s) in keep or any(user is not ln for user, _ in s.uses())
    at = graph.nodes.index(producer)  # the fused node goes right after the producer (or in its place)
    if addend is None:
        # The GEMM gives up its residual and writes a fresh value; `s` moves to the fused node.
        addend = graph.value(f"{producer.name}_out", s.dtype, s.shape)
        producer.set_input(3, None)
        while producer.inputs and producer.inputs[-1] is None:
            producer.set_inputs(producer.inputs[:-1])
        producer.outputs[0] = addend
        addend._producer = producer
        s._producer = None
        at += 1
        fused_from = ln.fused_from or (ln.name,)
    else:
        fused_from = (producer.fused_from or (producer.name,)) + (ln.fused_from or (ln.name,))
        graph.remove_node(producer)
    y = ln.outputs[0]
    scale, bias = ln.input(1), ln.input(2)
    attrs = {"axis": int(ln.attrs.get("axis", -1)), "epsilon": float(ln.attrs.get("epsilon", 1e-5))}
    graph.remove_node(ln)
    outputs = [y, s] if sum_needed else [y]
    node = Node("AddLayerNorm", [addend, r, scale, bias], outputs, attrs, name=graph.unique_name("AddLayerNorm"),
                domain="kiln")
    node.fused_from = fused_from
    graph.add_node(node, before=graph.nodes[at] if at < len(graph.nodes) else None)
    return True

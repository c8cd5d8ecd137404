"""Gather with one constant scalar index on a tensor of rank >= 2 -> Slice + Squeeze.

    Gather(x, c, axis)      c a 0-d constant      ->  Squeeze(Slice(x, [c], [c+1], [axis]), [axis])

Gather copies (index_select); Slice and Squeeze are views, so the split of a packed
tensor (ViT's qkv.unbind(0), exported as three Gathers) costs nothing. Slice and Squeeze
take their parameters on the host, so the rewrite keeps CUDA-graph capture possible.
Rank-1 data (shape vectors) is left alone: there Gather is host shape arithmetic that
constant folding already understands. Runs after the cleanup loop.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph, Node
from kiln.passes.match import live_nodes, next_node


def gather_to_slice(graph: Graph) -> bool:
    """Rewrite every scalar-index Gather it can; True if any was rewritten."""
    changed = False
    for node in live_nodes(graph, "Gather"):
        changed |= _rewrite(graph, node)
    return changed


def _rewrite(graph: Graph, node: Node) -> bool:
    data, idx = node.input(0), node.input(1)
    if data is None or data.shape is None or len(data.shape) < 2 or idx is None or not idx.is_const:
        return False
    if np.ndim(idx.const) != 0:
        return False
    rank = len(data.shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    i = int(idx.const.item())
    if i < 0:
        dim = data.shape[axis]
        if not isinstance(dim, int):
            return False
        i += dim
    out = node.outputs[0]
    after = next_node(graph, node)
    graph.remove_node(node)
    axes = graph.constant(np.array([axis], np.int64), f"{node.name}_axes")
    bounds = [graph.constant(np.array([v], np.int64), f"{node.name}_{n}") for n, v in (("start", i), ("end", i + 1))]
    sliced = graph.value(f"{node.name}_slice", data.dtype,
                         tuple(1 if k == axis else d for k, d in enumerate(data.shape)))
    graph.add_node(Node("Slice", [data, bounds[0], bounds[1], axes], [sliced], name=graph.unique_name(node.name)),
                   before=after)
    graph.add_node(Node("Squeeze", [sliced, axes], [out], name=graph.unique_name(f"{node.name}_squeeze")),
                   before=after)
    return True

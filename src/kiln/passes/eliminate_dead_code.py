"""Dead-code elimination.

  node with no output reaching a graph output -> removed

Liveness flows backwards from the graph outputs through node inputs; a node with
subgraphs (If/Loop/Scan) also keeps alive the outer values its bodies capture by name.
Needs the nodes in topological order (verify guarantees it), nothing else.
"""
from __future__ import annotations

from kiln.ir.graph import Graph
from kiln.passes.match import subgraph_captures


def eliminate_dead_code(graph: Graph) -> bool:
    """Remove every node none of whose outputs is needed by a graph output."""
    live: set[int] = {id(v) for v in graph.outputs}
    live_names: set[str] = set()
    dead = []
    # Reverse topological order: every reader of a value is visited before its producer.
    for node in reversed(graph.nodes):
        if not any(id(o) in live or o.name in live_names for o in node.outputs):
            dead.append(node)
            continue
        live.update(id(v) for v in node.inputs if v is not None)
        live_names |= subgraph_captures(node)
    graph.remove_nodes(dead)
    return bool(dead)

"""Structural checks of a Graph; passes' tests call `verify` after every pass."""
from __future__ import annotations

from kiln.errors import KilnError
from kiln.ir.graph import Graph


class GraphVerifyError(KilnError):
    pass


def verify(graph: Graph) -> None:
    """Raise GraphVerifyError unless: nodes are in topological order, every value has at
    most one producer that is in the graph, use lists match node inputs, and every
    output is defined."""
    defined: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.outer.values()}
    nodes = {id(n) for n in _all_nodes(graph)}  # subgraph nodes may read this graph's values
    for node in graph.nodes:
        if node.graph is not graph:
            raise GraphVerifyError(f"{node!r} does not point back to its graph")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if (node, i) not in v._uses:
                raise GraphVerifyError(f"{node!r} input {i} ({v.name}) is missing from its use list")
            if not v.is_const and id(v) not in defined:
                raise GraphVerifyError(f"{node!r} reads {v.name!r} before it is defined")
        for o in node.outputs:
            if o.producer() is not node:
                raise GraphVerifyError(f"{o.name!r} does not name {node!r} as its producer")
            if id(o) in defined:
                raise GraphVerifyError(f"{o.name!r} is defined twice")
            defined.add(id(o))
    for v in graph.values():
        for user, i in v._uses:
            if id(user) not in nodes or user.input(i) is not v:
                raise GraphVerifyError(f"{v.name!r} has a stale use by {user!r}")
    for o in graph.outputs:
        if not o.is_const and id(o) not in defined:
            raise GraphVerifyError(f"graph output {o.name!r} is never produced")
    names = [v.name for v in graph.values()]
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise GraphVerifyError(f"value names are not unique: {dup[:5]}")


def _all_nodes(graph: Graph) -> list:
    out = list(graph.nodes)
    for n in graph.nodes:
        for attr in n.attrs.values():
            for g in attr if isinstance(attr, list) else [attr]:
                if isinstance(g, Graph):
                    out.extend(_all_nodes(g))
    return out

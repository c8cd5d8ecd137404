"""--layer-precision NAME_OR_PATTERN=PRECISION: which layers a user rule pins to a precision.

A rule matches a layer by its ONNX node name, exactly or as an fnmatch glob ("enc*/Add_*");
a fused layer also matches by any name in its `fused_from` (the source nodes it replaced).
Earlier rules win. Rules are matched on the optimized graph, so a node the passes folded
away or removed matches nothing, and a rule that matches nothing is an error.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from kiln.errors import BuildError
from kiln.ir.graph import Graph, Node

_LISTED = 8  # layer names shown when a rule matches nothing


def match_layer_rules(graph: Graph, rules: Sequence[tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """id(node) -> (precision, pattern) for each node a rule matches (the first matching rule)."""
    chosen: dict[int, tuple[str, str]] = {}
    for pattern, precision in rules:
        hits = [n for n in graph.nodes if _matches(n, pattern)]
        if not hits:
            raise BuildError(_no_match(graph, pattern))
        for n in hits:
            if any(isinstance(a, Graph) or isinstance(a, list) and any(isinstance(g, Graph) for g in a)
                   for a in n.attrs.values()):
                raise BuildError(f"layer precision rule {pattern}={precision} matches layer {n.name!r} ({n.op}), "
                                 "which holds subgraphs; control flow follows the engine precision. Narrow the "
                                 "pattern to the layers inside or around it.")
            chosen.setdefault(id(n), (precision, pattern))
    return chosen


def _matches(node: Node, pattern: str) -> bool:
    return any(name == pattern or fnmatchcase(name, pattern) for name in (node.name, *node.fused_from))


def _no_match(graph: Graph, pattern: str) -> str:
    names = [n.name for n in graph.nodes]
    shown = ", ".join(repr(n) for n in names[:_LISTED]) + (f" ... ({len(names)} in all)" if len(names) > _LISTED else "")
    return (f"layer precision pattern {pattern!r} matches no layer of the optimized graph (layers: {shown or 'none'}). "
            "Patterns match ONNX node names exactly or as fnmatch globs (e.g. 'encoder/*'); fused layers match by "
            "their source names; nodes folded into constants or removed by the passes no longer exist. "
            "Fix the name, or see the layer names with `kiln build --dump-ir DIR` or `kiln inspect`.")

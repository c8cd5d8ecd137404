"""Small pattern-matching helpers shared by the passes.

Invariant the helpers protect: a value that is a graph output or that a subgraph
captures by name (If/Loop/Scan bodies read outer values through `Graph.outer`, which
the use lists do not see) is *pinned*: a pass may not remove it or give it away.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from kiln.ir.dtypes import DType, from_numpy, from_torch
from kiln.ir.graph import Graph, Node, Value


def subgraph_captures(node: Node) -> set[str]:
    """Names of outer values the node's subgraphs (recursively) capture."""
    names: set[str] = set()
    for attr in node.attrs.values():
        for g in attr if isinstance(attr, list) else [attr]:
            if isinstance(g, Graph):
                names |= set(g.outer)
                for inner in g.nodes:
                    names |= subgraph_captures(inner)
    return names


def pinned(graph: Graph) -> set[int]:
    """ids of the values a pass must keep: graph outputs and subgraph captures."""
    captured: set[str] = set()
    for n in graph.nodes:
        captured |= subgraph_captures(n)
    ids = {id(v) for v in graph.outputs}
    if captured:
        ids |= {id(v) for v in graph.values() if v.name in captured}
    return ids


def live_nodes(graph: Graph, *ops: str) -> Iterator[Node]:
    """The graph's ai.onnx nodes (of `ops`, when given), skipping those a rewrite already removed.

    Iterates over a snapshot, so the caller may rewrite the graph as it goes."""
    for node in list(graph.nodes):
        if node.graph is graph and node.domain == "" and (not ops or node.op in ops):
            yield node


def live_ops(graph: Graph, *qualified_ops: str) -> Iterator[Node]:
    """The graph's nodes of `qualified_ops` ("QuantizeLinear", "kiln::QMatMul", ...), of any
    domain, skipping those a rewrite already removed; a snapshot, as live_nodes."""
    for node in list(graph.nodes):
        if node.graph is graph and node.qualified_op in qualified_ops:
            yield node


def sole_user(v: Value, keep: set[int]) -> Node | None:
    """The one node that reads `v`, once, when `v` is not pinned; else None."""
    uses = v.uses()
    if len(uses) != 1 or id(v) in keep:
        return None
    return uses[0][0]


def only_read_by(v: Value, nodes: Iterable[Node], keep: set[int]) -> bool:
    """True when every read of `v` is by one of `nodes` and `v` is not pinned."""
    ids = {id(n) for n in nodes}
    return id(v) not in keep and all(id(n) in ids for n, _ in v.uses())


def produced_by(v: Value | None, *ops: str) -> Node | None:
    """The producer of `v` if its qualified op is among `ops`: an ONNX op by its name ("Conv"),
    another domain's as domain::op ("kiln::FusedConv")."""
    p = v.producer() if v is not None else None
    return p if p is not None and p.qualified_op in ops else None


def to_numpy(t: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        t = t.float()
    return t.numpy()


def const_array(v: Value | None) -> np.ndarray | None:
    return to_numpy(v.const) if v is not None and v.is_const else None


def scalar_const(v: Value | None) -> float | None:
    """The value of a one-element constant, as a float; None otherwise."""
    arr = const_array(v)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(-1)[0])


def const_ints(v: Value | None) -> list[int] | None:
    arr = const_array(v)
    return None if arr is None else [int(a) for a in arr.reshape(-1)]


def is_close(value: float | None, target: float, rtol: float = 1e-3) -> bool:
    return value is not None and abs(value - target) <= rtol * abs(target)


def other_input(node: Node, v: Value) -> Value | None:
    """For a binary node reading `v` once, the other operand."""
    a, b = node.input(0), node.input(1)
    if a is v and b is not v:
        return b
    if b is v and a is not v:
        return a
    return None


def reduce_axes(node: Node) -> list[int] | None:
    """Axes of a Reduce* node: the constant second input (opset 18) or the old attribute."""
    if node.input(1) is not None:
        return const_ints(node.input(1))
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def norm_axes(axes: Sequence[int], rank: int | None) -> list[int] | None:
    """Axes mapped into [0, rank); negative axes need the rank."""
    if any(a < 0 for a in axes) and rank is None:
        return None
    return sorted(a + rank if a < 0 else a for a in axes) if rank is not None else sorted(axes)


def rank(v: Value) -> int | None:
    return None if v.shape is None else len(v.shape)


def new_const(graph: Graph, array: np.ndarray, like: np.ndarray | torch.Tensor, hint: str) -> Value:
    """A constant holding `array` in the dtype and container (numpy/torch) of `like`."""
    if isinstance(like, torch.Tensor):
        data: Any = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(like.dtype)
    else:
        data = np.ascontiguousarray(array.astype(like.dtype))
    return graph.constant(data, hint)


def dtype_of(t: np.ndarray | torch.Tensor) -> DType:
    return from_torch(t.dtype) if isinstance(t, torch.Tensor) else from_numpy(t.dtype)


def next_node(graph: Graph, node: Node) -> Node | None:
    i = graph.nodes.index(node)
    return graph.nodes[i + 1] if i + 1 < len(graph.nodes) else None


def trimmed(inputs: Sequence[Value | None]) -> list[Value | None]:
    """`inputs` without its trailing absent ones (ONNX's way of omitting optional inputs)."""
    out = list(inputs)
    while out and out[-1] is None:
        out.pop()
    return out


def place_inputs(node: Node, at: dict[int, Value | None]) -> None:
    """Set `node`'s optional inputs at the positions in `at` (absent ones between stay None),
    keeping no trailing absent inputs."""
    inputs = list(node.inputs) + [None] * (max(at) + 1 - len(node.inputs))
    for i, v in at.items():
        inputs[i] = v
    node.set_inputs(trimmed(inputs))


def replace_nodes(graph: Graph, nodes: Sequence[Node], op: str, inputs: Sequence[Value | None],
                  attrs: dict[str, Any], domain: str = "") -> Node:
    """Replace `nodes` (whose last one yields the result) by one node computing `op` on
    `inputs` (trailing absent ones dropped).

    The new node takes over the last node's output Value object, so its name (a binding
    when it is a graph output) and every use survive. It sits where the last node sat:
    every input of the pattern is defined before that point.
    """
    last = nodes[-1]
    out = last.outputs[0]
    ids = {id(n) for n in nodes}
    after = graph.nodes.index(last) + 1
    anchor = next((n for n in graph.nodes[after:] if id(n) not in ids), None)
    graph.remove_nodes(nodes)
    node = Node(op, trimmed(inputs), [out], attrs, name=graph.unique_name(op), domain=domain)
    node.fused_from = tuple(name for n in nodes for name in (n.fused_from or (n.name,)))
    return graph.add_node(node, before=anchor)


def bypass(graph: Graph, node: Node, src: Value, keep: set[int]) -> bool:
    """Remove `node`, whose output 0 equals `src`, and make its readers read `src`.

    When the output is pinned (a graph output), `src`'s producer is made to produce the
    output Value itself instead, keeping the binding's name; impossible (returns False)
    when `src` is a graph input, a constant or pinned too.
    """
    out = node.outputs[0]
    if id(out) not in keep:
        graph.remove_node(node)
        out.replace_all_uses_with(src)
        return True
    producer = src.producer()
    if producer is None or id(src) in keep or any(v is src for v in graph.inputs):
        return False
    graph.remove_node(node)
    src.replace_all_uses_with(out)
    producer.outputs[producer.outputs.index(src)] = out
    out._producer = producer
    src._producer = None
    return True


def drop_if_dead(graph: Graph, node: Node, keep: set[int]) -> None:
    """Remove `node` when nothing reads its outputs any more."""
    if node.graph is graph and all(not o.uses() and id(o) not in keep for o in node.outputs):
        graph.remove_node(node)

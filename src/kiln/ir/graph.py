"""The IR: a Graph of Nodes connected by Values.

Design note. A Value is an edge: produced by at most one Node (or by nothing, when it
is a graph input or a constant) and read by any number of Nodes. Constants are Values
that carry their data (`Value.const`, a numpy array or a torch tensor); there is no
separate initializer list. Nodes are kept in a list in topological order; passes that
insert nodes either insert them at the right place or call `Graph.sort()`. Use lists
are kept per Value so that `consumers()` and `replace_all_uses_with()` are cheap.

Node attributes are plain Python values: int, float, str, bytes, lists of those, numpy
arrays (ONNX tensor attributes) and Graphs (subgraphs of If/Loop/Scan).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from kiln.ir.dtypes import DType
from kiln.ir.shapes import Shape


class Value:
    __slots__ = ("name", "dtype", "shape", "const", "kind", "_producer", "_uses")

    def __init__(self, name: str, dtype: DType | None = None, shape: Shape | None = None,
                 const: np.ndarray | torch.Tensor | None = None, kind: str = "tensor") -> None:
        self.name = name
        self.kind = kind  # "tensor", "sequence" (a list of tensors) or "optional" (a tensor/list or None)
        self.dtype = dtype
        self.shape = shape
        self.const = const
        self._producer: Node | None = None
        self._uses: list[tuple[Node, int]] = []

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def producer(self) -> Node | None:
        return self._producer

    def uses(self) -> list[tuple[Node, int]]:
        """(node, input index) pairs that read this value."""
        return list(self._uses)

    def consumers(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def replace_all_uses_with(self, other: Value) -> None:
        for node, i in list(self._uses):
            node.set_input(i, other)

    def __repr__(self) -> str:
        kind = "const " if self.is_const else ""
        return f"Value({kind}{self.name!r}, {self.dtype}, {self.shape})"


class Node:
    __slots__ = ("op", "domain", "name", "attrs", "_inputs", "outputs", "graph", "fused_from")

    def __init__(self, op: str, inputs: Iterable[Value | None], outputs: Iterable[Value],
                 attrs: dict[str, Any] | None = None, name: str = "", domain: str = "") -> None:
        self.op = op
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = list(outputs)
        self.graph: Graph | None = None
        # Names of the source (ONNX) nodes a fused node replaced; empty for source nodes.
        self.fused_from: tuple[str, ...] = ()
        for o in self.outputs:
            if o._producer is not None and o._producer is not self:
                raise ValueError(f"value {o.name!r} already has a producer")
        for o in self.outputs:
            o._producer = self
        for v in inputs:
            self._append_input(v)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        self._inputs.append(v)
        if v is not None:
            v._uses.append((self, len(self._inputs) - 1))

    def set_input(self, i: int, v: Value | None) -> None:
        old = self._inputs[i]
        if old is not None:
            old._uses.remove((self, i))
        self._inputs[i] = v
        if v is not None:
            v._uses.append((self, i))

    def set_inputs(self, values: Iterable[Value | None]) -> None:
        self.detach_inputs()
        for v in values:
            self._append_input(v)

    def detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.remove((self, i))
        self._inputs = []

    def input(self, i: int) -> Value | None:
        return self._inputs[i] if i < len(self._inputs) else None

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op}" if self.domain else self.op

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v else "<none>" for v in self._inputs)
        outs = ", ".join(v.name for v in self.outputs)
        return f"Node({self.qualified_op} {self.name!r}: ({ins}) -> ({outs}))"


class Graph:
    def __init__(self, name: str = "graph", opset: int = 17) -> None:
        self.name = name
        self.opset = opset
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counter = itertools.count()
        # Values captured from an enclosing graph (for subgraphs), by name.
        self.outer: dict[str, Value] = {}
        # "nhwc": 2-D convolution regions run channels-last (passes/choose_layout.py decides).
        self.layout: str = "nchw"
        # (min, max) of each symbolic input dim over the build's profiles (compiler/profiles.py:
        # symbol_bounds): an engine runs only inputs inside them. Empty: nothing known.
        self.dim_bounds: dict[str, tuple[int, int]] = {}

    @property
    def dim_max(self) -> dict[str, int]:
        """Each bounded symbol's largest value (dim_bounds' maxima): TacticQuery.dim_max."""
        return {sym: hi for sym, (_, hi) in self.dim_bounds.items()}

    def captured_values(self) -> list[Value]:
        """Non-constant values this graph (as a subgraph) reads from enclosing graphs, nested
        bodies included, in first-use order: they become the trailing inputs of the body."""
        defined = {id(v) for v in self.inputs}
        defined.update(id(o) for n in self.nodes for o in n.outputs)
        seen: dict[int, Value] = {}
        refs: list[Value] = []
        for n in self.nodes:
            refs.extend(v for v in n.inputs if v is not None)
            for attr in n.attrs.values():
                for g in attr if isinstance(attr, list) else [attr]:
                    if isinstance(g, Graph):
                        refs.extend(g.captured_values())
        refs.extend(self.outputs)
        for v in refs:
            if id(v) not in defined and not v.is_const:
                seen.setdefault(id(v), v)
        return list(seen.values())

    # -- construction -------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    def reserve_name(self, name: str) -> None:
        self._names.add(name)

    def value(self, hint: str, dtype: DType | None = None, shape: Shape | None = None) -> Value:
        return Value(self.unique_name(hint), dtype, shape)

    def constant(self, array: np.ndarray | torch.Tensor, hint: str = "const") -> Value:
        from kiln.ir.dtypes import from_numpy, from_torch

        if isinstance(array, torch.Tensor):
            dtype, shape = from_torch(array.dtype), tuple(array.shape)
        else:
            array = np.asarray(array)
            dtype, shape = from_numpy(array.dtype), tuple(array.shape)
        return Value(self.unique_name(hint), dtype, shape, const=array)

    def add_node(self, node: Node, before: Node | None = None) -> Node:
        node.graph = self
        if not node.name:
            node.name = self.unique_name(node.op)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def make_node(self, op: str, inputs: Iterable[Value | None], n_outputs: int = 1,
                  attrs: dict[str, Any] | None = None, domain: str = "",
                  before: Node | None = None, name: str = "") -> Node:
        outs = [self.value(f"{name or op}_out") for _ in range(n_outputs)]
        node = Node(op, inputs, outs, attrs, name=self.unique_name(name or op), domain=domain)
        return self.add_node(node, before=before)

    def remove_node(self, node: Node) -> None:
        node.detach_inputs()
        for o in node.outputs:
            if o._producer is node:
                o._producer = None
        self.nodes.remove(node)
        node.graph = None

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        doomed = {id(n) for n in nodes}
        for n in self.nodes:
            if id(n) in doomed:
                n.detach_inputs()
                for o in n.outputs:
                    if o._producer is n:
                        o._producer = None
                n.graph = None
        self.nodes = [n for n in self.nodes if id(n) not in doomed]

    def replace_output(self, old: Value, new: Value) -> None:
        self.outputs = [new if o is old else o for o in self.outputs]

    # -- queries -------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Every value reachable in this graph (inputs, node inputs and outputs), once each."""
        seen: set[int] = set()
        for v in itertools.chain(self.inputs, *((*(i for i in n.inputs if i), *n.outputs) for n in self.nodes), self.outputs):
            if id(v) not in seen:
                seen.add(id(v))
                yield v

    def is_output(self, v: Value) -> bool:
        return any(o is v for o in self.outputs)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.qualified_op] = counts.get(n.qualified_op, 0) + 1
        return counts

    def sort(self) -> None:
        """Re-order nodes topologically (Kahn's algorithm, stable: ties keep current order)."""
        import heapq

        order = {id(n): i for i, n in enumerate(self.nodes)}
        producer = {id(o): n for n in self.nodes for o in n.outputs}
        waiting: dict[int, int] = {}
        readers: dict[int, list[Node]] = {}
        for n in self.nodes:
            deps = {id(producer[id(v)]) for v in n.inputs if v is not None and id(v) in producer}
            deps.discard(id(n))
            waiting[id(n)] = len(deps)
            for d in deps:
                readers.setdefault(d, []).append(n)
        ready = [(order[id(n)], n) for n in self.nodes if waiting[id(n)] == 0]
        heapq.heapify(ready)
        out: list[Node] = []
        while ready:
            _, n = heapq.heappop(ready)
            out.append(n)
            for r in readers.get(id(n), []):
                waiting[id(r)] -= 1
                if waiting[id(r)] == 0:
                    heapq.heappush(ready, (order[id(r)], r))
        if len(out) != len(self.nodes):
            raise ValueError(f"graph {self.name!r} has a cycle")
        self.nodes = out

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

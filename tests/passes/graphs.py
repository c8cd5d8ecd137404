"""Build small IR graphs concisely for pass tests, and check a pass keeps the numbers.

The builder evaluates every node on sample data as it is added (with the reference
ops), so each value gets its true dtype and static shape without shape inference.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from kiln.ir import Graph, Value, verify
from kiln.ir.dtypes import from_name, from_torch
from kiln.kernels.reference.interpret import as_tensor, evaluate_node, run_graph


class Builder:
    def __init__(self, name: str = "g", seed: int = 0) -> None:
        self.graph = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.feeds: dict[str, np.ndarray] = {}
        self._env: dict[int, torch.Tensor] = {}

    def input(self, name: str, shape: tuple, dtype: str = "float32", data: np.ndarray | None = None) -> Value:
        if data is None:
            data = self.rng.standard_normal(shape).astype(dtype) if dtype.startswith("float") \
                else self.rng.integers(0, 3, shape).astype(dtype)
        v = Value(name, from_name(dtype), tuple(shape))
        self.graph.reserve_name(name)
        self.graph.inputs.append(v)
        self.feeds[name] = data
        self._env[id(v)] = as_tensor(data)
        return v

    def const(self, data: Any, name: str = "c", dtype: str = "float32") -> Value:
        arr = np.asarray(data, dtype=dtype)
        v = self.graph.constant(arr, name)
        self._env[id(v)] = as_tensor(arr)
        return v

    def rand(self, *shape: int, name: str = "w", positive: bool = False) -> Value:
        arr = self.rng.standard_normal(shape).astype(np.float32)
        return self.const(np.abs(arr) + 0.5 if positive else arr, name)

    def op(self, op: str, *inputs: Value | None, n_outputs: int = 1, domain: str = "", **attrs: Any) -> Any:
        node = self.graph.make_node(op, inputs, n_outputs=n_outputs, attrs=attrs, domain=domain)
        results = evaluate_node(node, [self._env[id(v)] if v is not None else None for v in inputs])
        for out, t in zip(node.outputs, results):
            out.dtype, out.shape = from_torch(t.dtype), tuple(t.shape)
            self._env[id(out)] = t
        return node.outputs[0] if n_outputs == 1 else tuple(node.outputs)

    def output(self, *values: Value) -> Graph:
        self.graph.outputs.extend(values)
        verify(self.graph)
        return self.graph


def check_pass(pass_fn: Callable[[Graph], bool], b: Builder, rtol: float = 1e-5,
               atol: float = 1e-6) -> bool:
    """Run `pass_fn` on b's graph; verify it and assert the outputs did not change."""
    graph = b.graph
    before = run_graph(graph, b.feeds)
    names = [o.name for o in graph.outputs]
    changed = pass_fn(graph)
    verify(graph)
    assert [o.name for o in graph.outputs] == names, "graph output names must survive a pass"
    after = run_graph(graph, b.feeds)
    for name in names:
        torch.testing.assert_close(after[name], before[name], rtol=rtol, atol=atol)
    return changed


def ops(graph: Graph) -> dict[str, int]:
    return graph.op_counts()

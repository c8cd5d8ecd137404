"""Run a Graph node by node with the reference ops: the oracle for whole graphs.

Used by constant folding and by tests that check a pass keeps a graph's outputs.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from kiln.errors import UnsupportedOpError
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.registry import lookup


def as_tensor(value: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    arr = np.asarray(value)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.asarray(arr, order="C").copy()
    return torch.from_numpy(arr).to(device)


def evaluate_node(node: Node, inputs: list[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
    op = lookup(node.qualified_op)
    if op is None:
        raise UnsupportedOpError(f"no reference implementation for op {node.qualified_op} (node {node.name!r})")
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    result = op.fn(*inputs, **node.attrs)
    if isinstance(result, torch.Tensor) or len(node.outputs) == 1 and not isinstance(result, tuple):
        result = (result,)  # one output: a tensor, a sequence (list) or an empty optional (None)
    return tuple(result)


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray | torch.Tensor],
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    env: dict[int, torch.Tensor] = {}

    def read(v: Value | None) -> torch.Tensor | None:
        if v is None:
            return None
        if id(v) in env:
            return env[id(v)]
        if v.is_const:
            env[id(v)] = as_tensor(v.const, device)
            return env[id(v)]
        raise KeyError(f"value {v.name!r} has not been computed")

    for v in graph.inputs:
        env[id(v)] = as_tensor(feeds[v.name], device)
    for node in graph.nodes:
        outs = evaluate_node(node, [read(v) for v in node.inputs])
        for o, t in zip(node.outputs, outs):
            env[id(o)] = t
    return {o.name: read(o) for o in graph.outputs}

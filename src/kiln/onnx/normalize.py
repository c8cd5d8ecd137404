"""Bring older-opset node forms to the newest opset's signature.

The reference ops (and every tactic) implement one signature per op: the newest. Where
an attribute became an input in a later opset, the attribute is turned into a constant
input here; attributes that later opsets dropped are removed. Each rule is a plain
function in RULES, keyed by op type, and says in its docstring which opsets it covers.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from kiln.ir.graph import Graph, Node, Value

Rule = Callable[[Graph, Node, int], None]
RULES: dict[str, list[Rule]] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES.setdefault(op, []).append(fn)
        return fn
    return register


def normalize_node(graph: Graph, node: Node, opset: int) -> None:
    for fn in RULES.get(node.op, []) if not node.domain else []:
        fn(graph, node, opset)


def _attr_to_input(graph: Graph, node: Node, attr: str, index: int, dtype: Any = np.int64) -> None:
    """Move attribute `attr` to input position `index` as a constant (padding with None)."""
    if attr not in node.attrs:
        return
    value = np.asarray(node.attrs.pop(attr), dtype=dtype)
    inputs = list(node.inputs)
    while len(inputs) < index:
        inputs.append(None)
    const = graph.constant(value, f"{node.name}_{attr}")
    if len(inputs) == index:
        inputs.append(const)
    else:
        inputs[index] = const
    node.set_inputs(inputs)


# op -> the opset in which its `axes` attribute became input 1.
_AXES_BECAME_INPUT = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13, **{op: 18 for op in (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare")}}


@rule(*_AXES_BECAME_INPUT)
def _axes_input(graph: Graph, node: Node, opset: int) -> None:
    """Squeeze/Unsqueeze/ReduceSum < 13, other Reduce* < 18: axes attribute -> input 1."""
    if opset < _AXES_BECAME_INPUT[node.op]:
        _attr_to_input(graph, node, "axes", 1)


@rule("Split")
def _split(graph: Graph, node: Node, opset: int) -> None:
    """Split < 13: split attribute -> input 1; < 18: number of outputs made explicit."""
    if opset < 13:
        _attr_to_input(graph, node, "split", 1)
    if node.input(1) is None and "num_outputs" not in node.attrs:
        node.attrs["num_outputs"] = len(node.outputs)


@rule("Slice")
def _slice(graph: Graph, node: Node, opset: int) -> None:
    """Slice < 10: starts/ends/axes attributes -> inputs 1..3."""
    if opset < 10:
        for i, name in enumerate(("starts", "ends", "axes"), start=1):
            _attr_to_input(graph, node, name, i)


@rule("Pad")
def _pad(graph: Graph, node: Node, opset: int) -> None:
    """Pad < 11: pads/value attributes -> inputs 1 and 2."""
    if opset < 11:
        _attr_to_input(graph, node, "pads", 1)
        _attr_to_input(graph, node, "value", 2, dtype=_float_dtype(node.input(0)))


@rule("Clip")
def _clip(graph: Graph, node: Node, opset: int) -> None:
    """Clip < 11: min/max attributes -> inputs 1 and 2."""
    if opset < 11:
        _attr_to_input(graph, node, "min", 1, dtype=_float_dtype(node.input(0)))
        _attr_to_input(graph, node, "max", 2, dtype=_float_dtype(node.input(0)))


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(graph: Graph, node: Node, opset: int) -> None:
    """Softmax family < 13: 2-D coercion at `axis` (default 1)."""
    if opset < 13:
        node.attrs.setdefault("axis", 1)
        node.attrs["coerce_2d"] = 1


_DROPPED = {"consumed_inputs", "is_test", "spatial"}


@rule("BatchNormalization", "Dropout", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh",
      "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Clip", "Elu",
      "LeakyRelu", "Selu", "PRelu", "HardSigmoid")
def _legacy_attrs(graph: Graph, node: Node, opset: int) -> None:
    """Old opsets: drop attributes later removed (consumed_inputs, is_test, spatial)."""
    for name in _DROPPED:
        node.attrs.pop(name, None)


def _float_dtype(v: Value | None) -> Any:
    if v is not None and v.dtype is not None and v.dtype.is_float and v.dtype.torch_name in ("float16", "float64"):
        return np.dtype(v.dtype.torch_name)
    return np.float32

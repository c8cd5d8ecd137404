"""Lower a graph's float32 computation to fp16 or bf16.

Rewrite: every float32 value inside the graph becomes the compute type; float32 constants
are converted once at build time; Cast(to=float32) becomes Cast(to=compute type). The
engine's bindings keep the model's declared types: a Cast is inserted after each float32
graph input and before each float32 graph output, so callers pass and receive float32.
Run after the fusion passes (they match on the original constants).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node

_TARGET = {"fp16": dtypes.FLOAT16, "bf16": dtypes.BFLOAT16}


def apply_precision(graph: Graph, precision: str) -> bool:
    if precision not in _TARGET:
        return False
    target = _TARGET[precision]
    changed = False
    boundary_in = [v for v in graph.inputs if v.dtype == dtypes.FLOAT32]
    boundary_out = [v for v in graph.outputs if v.dtype == dtypes.FLOAT32]
    inner = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    for v in list(graph.values()):
        if id(v) in inner or v.dtype != dtypes.FLOAT32:
            continue
        if v.is_const:
            v.const = _convert(v.const, target)
        v.dtype = target
        changed = True
    for node in graph.nodes:
        changed |= _retarget_attrs(node, target)
    first = graph.nodes[0] if graph.nodes else None
    for v in boundary_in:
        inner_v = graph.value(f"{v.name}_{precision}", target, v.shape)
        v.replace_all_uses_with(inner_v)
        graph.add_node(Node("Cast", [v], [inner_v], {"to": target.onnx}, name=graph.unique_name(f"{v.name}_cast")),
                       before=first)
        changed = True
    for v in boundary_out:
        producer = v.producer()
        if producer is None:
            continue
        inner_v = graph.value(f"{v.name}_{precision}", target, v.shape)
        i = producer.outputs.index(v)
        producer.outputs[i] = inner_v
        inner_v._producer = producer
        v._producer = None
        v.replace_all_uses_with(inner_v)
        graph.add_node(Node("Cast", [inner_v], [v], {"to": TensorProto.FLOAT}, name=graph.unique_name(f"{v.name}_cast")))
        changed = True
    graph.sort()
    return changed


def _convert(const: np.ndarray | torch.Tensor, target: dtypes.DType) -> np.ndarray | torch.Tensor:
    t = torch.from_numpy(np.asarray(const, order="C")) if isinstance(const, np.ndarray) else const
    t = t.to(target.torch)
    return t.numpy() if target == dtypes.FLOAT16 else t


def _retarget_attrs(node: Node, target: dtypes.DType) -> bool:
    changed = False
    if node.op in ("Cast", "RandomNormal", "RandomUniform", "EyeLike") and node.attrs.get("to", node.attrs.get("dtype")) == TensorProto.FLOAT:
        node.attrs["to" if "to" in node.attrs else "dtype"] = target.onnx
        changed = True
    for k, a in list(node.attrs.items()):
        if isinstance(a, np.ndarray) and a.dtype == np.float32:
            node.attrs[k] = _convert(a, target)
            changed = True
        elif k == "program" and isinstance(a, list):
            changed |= _retarget_program(a, target)
    return changed


def _retarget_program(program: list, target: dtypes.DType) -> bool:
    """Pointwise programs carry inlined scalars and Casts: move their float32 to the target."""
    changed = False
    for instr in program:
        attrs = instr[2] if len(instr) > 2 and isinstance(instr[2], dict) else {}
        if instr[0] == "Cast" and attrs.get("to") == TensorProto.FLOAT:
            attrs["to"] = target.onnx
            changed = True
        for arg in instr[1]:
            if isinstance(arg, dict) and arg.get("dtype") == "float32":
                arg["dtype"] = target.name
                changed = True
    return changed

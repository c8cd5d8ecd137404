"""Move each node's float32 math to its compute type, with Casts where types meet.

Rewrite, given a compute type per node (the engine's by default): every float32 value a
node produces becomes that node's type; float32 constants are converted once at build time
to the type of each node that reads them; Cast(to=float32) and float32 attributes move to
the node's type. Where a node reads a float32 value produced in another type, a Cast is
inserted (one per value and type, shared by its readers). The engine's bindings keep the
model's declared types: a float32 graph input is cast to each reader's type and a float32
graph output produced in another type is computed under a new name and cast back.

Finite constants beyond the target type's range (float16: |x| > 65504) are clamped to its
largest finite value, as TensorRT clamps fp16 weights, rather than becoming infinite: a
float32 "minus the largest float" attention mask stays a finite large negative number (a row
masked entirely softmaxes to uniform weights, not NaN), and a scalar inlined into a fused
program is one every kernel can hold. Infinities and NaN keep their value.

Only top-level float32 tensors move; values of other types (int, an fp16 model's fp16) keep
theirs. Shape and Size read only shapes, so they never cast their input.
Run after the fusion passes (they match on the original constants).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from onnx import TensorProto

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value

F32 = dtypes.FLOAT32
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def retype(graph: Graph, compute: Mapping[int, dtypes.DType], default: dtypes.DType) -> bool:
    """Give node n the compute type compute.get(id(n), default); True when the graph changed."""
    def type_of(n: Node) -> dtypes.DType:
        return compute.get(id(n), default)

    if all(type_of(n) == F32 for n in graph.nodes):
        return False
    bindings = {id(v) for v in graph.outputs}
    moving = {id(v) for v in graph.values() if v.dtype == F32}
    changed = False
    for n in graph.nodes:
        t = type_of(n)
        if t != F32:
            for o in n.outputs:
                if id(o) in moving and id(o) not in bindings:
                    o.dtype = t
            changed |= _retarget_attrs(n, t)
    for v in list(graph.outputs):
        p = v.producer()
        if v.dtype == F32 and p is not None and type_of(p) != F32:
            moving.add(id(_compute_output_under_new_name(graph, v, type_of(p))))
            changed = True
    changed |= _convert_constants(graph, moving, bindings, type_of)
    changed |= _insert_casts(graph, moving, type_of)
    graph.sort()
    return changed


def _compute_output_under_new_name(graph: Graph, v: Value, t: dtypes.DType) -> Value:
    """The producer writes `inner` (type t); Cast(inner) -> v keeps the binding float32."""
    producer = v.producer()
    inner = graph.value(f"{v.name}_{SHORT[t.name]}", t, v.shape)
    producer.outputs[producer.outputs.index(v)] = inner
    inner._producer = producer
    v._producer = None
    v.replace_all_uses_with(inner)
    graph.add_node(Node("Cast", [inner], [v], {"to": TensorProto.FLOAT}, name=graph.unique_name(f"{v.name}_cast")))
    return inner


def _readers(graph: Graph, moving: set[int], type_of) -> list[tuple[Node, int, Value, dtypes.DType]]:  # noqa: ANN001
    """(node, input index, value, wanted type) for each read of a moving float32 tensor."""
    return [(n, i, v, type_of(n)) for n in list(graph.nodes) if n.op not in _SHAPE_ONLY or n.domain
            for i, v in enumerate(n.inputs) if v is not None and id(v) in moving and v.kind == "tensor"]


def _convert_constants(graph: Graph, moving: set[int], bindings: set[int], type_of) -> bool:  # noqa: ANN001
    """Each float32 constant in the type of its readers: in place when they agree, else one copy per
    type (a constant that is also a graph output keeps float32 for its binding)."""
    wants: dict[int, dict[str, dtypes.DType]] = {}
    for _, _, v, t in _readers(graph, moving, type_of):
        if v.is_const:
            wants.setdefault(id(v), {F32.name: F32} if id(v) in bindings else {})[t.name] = t
    changed = False
    copies: dict[tuple[int, str], Value] = {}
    for n, i, v, t in _readers(graph, moving, type_of):
        if not v.is_const or t == F32 and F32.name in wants[id(v)] and len(wants[id(v)]) > 1:
            continue
        if len(wants[id(v)]) == 1:
            if v.dtype != t:
                v.const, v.dtype = _convert(v.const, t), t
                changed = True
            continue
        key = (id(v), t.name)
        if key not in copies:
            copies[key] = graph.constant(_convert(v.const, t), hint=f"{v.name}_{SHORT[t.name]}")
        n.set_input(i, copies[key])
        changed = True
    return changed


def _insert_casts(graph: Graph, moving: set[int], type_of) -> bool:  # noqa: ANN001
    casts: dict[tuple[int, str], Value] = {}
    for n, i, v, t in _readers(graph, moving, type_of):
        if v.is_const or v.dtype == t:
            continue
        key = (id(v), t.name)
        if key not in casts:
            casts[key] = graph.value(f"{v.name}_{SHORT[t.name]}", t, v.shape)
            graph.add_node(Node("Cast", [v], [casts[key]], {"to": t.onnx}, name=graph.unique_name(f"{v.name}_cast")),
                           before=n)
        n.set_input(i, casts[key])
    return bool(casts)


def _convert(const: np.ndarray | torch.Tensor, target: dtypes.DType) -> np.ndarray | torch.Tensor:
    t = torch.from_numpy(np.asarray(const, order="C")) if isinstance(const, np.ndarray) else const
    top = torch.finfo(target.torch).max
    if t.is_floating_point() and top < torch.finfo(t.dtype).max:   # clamp finite values (module docstring)
        t = torch.where(torch.isfinite(t), t.clamp(-top, top), t)
    t = t.to(target.torch)
    return t.numpy() if target in (dtypes.FLOAT16, F32) else t


def in_range(value: float, target: dtypes.DType) -> float:
    """A finite scalar clamped to the target float type's largest finite magnitude (module docstring)."""
    top = float(torch.finfo(target.torch).max)
    return value if not math.isfinite(value) or abs(value) <= top else math.copysign(top, value)


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
                arg["const"] = in_range(arg["const"], target)
                changed = True
    return changed

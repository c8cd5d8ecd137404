"""ModelProto -> Graph.

Design note. Shape inference runs on the ONNX model first (onnx's own, with symbolic
dims and data propagation), with the inputs' dims narrowed to what the build's shape
profiles allow: a dim that is the same at min and max becomes static, so that shape
arithmetic on it folds away later. Initializers and Constant nodes both become constant
Values. Subgraphs (If/Loop/Scan bodies) are imported recursively; names they read from
enclosing graphs resolve to the outer Values and are recorded in `Graph.outer`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from kiln.errors import ModelLoadError
from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.shapes import Shape
from kiln.onnx.load import check_model, default_opset, load_model
from kiln.onnx.normalize import normalize_node
from kiln.onnx.qoperator import expand_contrib, expand_qoperator
from kiln.runtime.arrays import VIEWED_TORCH, array_to_tensor

__all__ = ["import_model", "load_model", "tensor_to_array", "fix_input_dims"]


def tensor_to_array(t: onnx.TensorProto) -> np.ndarray | torch.Tensor:
    """An ONNX tensor as numpy, or as torch where numpy lacks the type (bf16, fp8); sub-byte
    types come widened (int4 as int8, float4 as float32 ...), as kiln holds them."""
    dtypes.from_onnx(t.data_type)  # rejects types kiln has no DType for
    value = array_to_tensor(numpy_helper.to_array(t))
    if value.dtype in VIEWED_TORCH:
        return value
    return value.numpy().copy()  # copy: detaches from the protobuf buffer


def fix_input_dims(model: onnx.ModelProto, static_dims: Mapping[str, Sequence[int | str]]) -> onnx.ModelProto:
    """A copy of `model` whose listed inputs have the given dims (int: static, str: symbol)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        dims = static_dims.get(inp.name)
        if dims is None:
            continue
        if not inp.type.HasField("tensor_type"):
            continue
        had_shape = inp.type.tensor_type.HasField("shape")
        shape = inp.type.tensor_type.shape
        if not had_shape:  # rank unknown in the model: take the profile's
            for _ in dims:
                shape.dim.add()
        if len(shape.dim) != len(dims):
            raise ModelLoadError(f"input {inp.name!r} has rank {len(shape.dim)} in the model but the shape "
                                 f"profile gives {len(dims)} dims; give a shape with {len(shape.dim)} dims.")
        for d, v in zip(shape.dim, dims):
            if isinstance(v, int):
                d.ClearField("dim_param")
                d.dim_value = v
            else:
                d.ClearField("dim_value")
                d.dim_param = v
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the runtime records real shapes
        return model


def import_model(model: onnx.ModelProto, *, run_shape_inference: bool = True) -> Graph:
    check_model(model)
    model = expand_contrib(model)   # ONNX Runtime's QOperator contrib ops as standard DQ -> op -> Q
    if run_shape_inference:
        model = infer_shapes(model)
    opset = default_opset(model)
    return _Importer(opset).graph(model.graph, outer={})


_KINDS = {"tensor_type": "tensor", "sequence_type": "sequence", "optional_type": "optional"}


def _value_kind(vi: onnx.ValueInfoProto) -> str:
    return _KINDS.get(vi.type.WhichOneof("value") or "tensor_type", "tensor")


def _value_type(vi: onnx.ValueInfoProto) -> tuple[dtypes.DType | None, Shape | None]:
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    dt = dtypes.BY_ONNX.get(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dt, None
    dims: list[int | str] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dt, tuple(dims)


class _Importer:
    def __init__(self, opset: int) -> None:
        self.opset = opset

    def graph(self, gp: onnx.GraphProto, outer: dict[str, Value]) -> Graph:
        g = Graph(gp.name or "main", self.opset)
        scope: dict[str, Value] = {}
        infos = {vi.name: vi for vi in (*gp.value_info, *gp.output, *gp.input)}

        def new_value(name: str) -> Value:
            g.reserve_name(name)
            if name not in infos:
                return Value(name)
            dt, shape = _value_type(infos[name])
            return Value(name, dt, shape, kind=_value_kind(infos[name]))

        for init in gp.initializer:
            arr = tensor_to_array(init)
            g.reserve_name(init.name)
            scope[init.name] = Value(init.name, dtypes.from_onnx(init.data_type), tuple(arr.shape), const=arr)
        for inp in gp.input:
            if inp.name in scope:  # old exporters list initializers as inputs too
                continue
            v = new_value(inp.name)
            scope[inp.name] = v
            g.inputs.append(v)

        def lookup(name: str, node: onnx.NodeProto) -> Value | None:
            if not name:
                return None
            if name in scope:
                return scope[name]
            if name in outer:
                g.outer[name] = outer[name]
                return outer[name]
            raise ModelLoadError(f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which no "
                                 "earlier node, input or initializer defines; the graph is not in topological "
                                 "order or is incomplete. Re-export the model.")

        for np_ in gp.node:
            if np_.op_type == "Constant" and np_.domain in ("", "ai.onnx"):
                arr = _constant_value(np_)
                name = np_.output[0]
                g.reserve_name(name)
                dt = dtypes.from_torch(arr.dtype) if isinstance(arr, torch.Tensor) else dtypes.from_numpy(arr.dtype)
                scope[name] = Value(name, dt, tuple(arr.shape), const=arr)
                continue
            inputs = [lookup(n, np_) for n in np_.input]
            # An omitted optional output keeps its position (an unread placeholder) when a later one is used.
            out_names = list(np_.output)
            while out_names and not out_names[-1]:
                out_names.pop()
            outputs = [new_value(n) if n else g.value(f"{np_.name or np_.op_type}_unused") for n in out_names]
            inner_outer = {**outer, **scope}
            attrs = {a.name: self.attribute(a, inner_outer) for a in np_.attribute}
            domain = "" if np_.domain == "ai.onnx" else np_.domain
            node = Node(np_.op_type, inputs, outputs, attrs, domain=domain)
            node.name = g.unique_name(np_.name or np_.op_type)
            g.add_node(node)
            normalize_node(g, node, self.opset)
            expand_qoperator(g, node)
            for o in outputs:
                scope[o.name] = o
        for out in gp.output:
            if out.name not in scope and out.name not in outer:
                raise ModelLoadError(f"graph output {out.name!r} is produced by no node; re-export the model.")
            v = scope.get(out.name) or outer[out.name]
            if v.dtype is None or v.shape is None:
                dt, shape = _value_type(out)
                v.dtype, v.shape = v.dtype or dt, v.shape if v.shape is not None else shape
            g.outputs.append(v)
        return g

    def attribute(self, a: onnx.AttributeProto, outer: dict[str, Value]) -> Any:
        T = onnx.AttributeProto
        if a.type == T.GRAPH:
            return self.graph(a.g, outer)
        if a.type == T.GRAPHS:
            return [self.graph(sub, outer) for sub in a.graphs]
        if a.type == T.TENSOR:
            return tensor_to_array(a.t)
        if a.type == T.TENSORS:
            return [tensor_to_array(t) for t in a.tensors]
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, list):
            return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
        return value


def _constant_value(node: onnx.NodeProto) -> np.ndarray | torch.Tensor:
    a = node.attribute[0] if node.attribute else None
    if a is None:
        raise ModelLoadError(f"Constant node {node.name!r} has no value attribute; re-export the model.")
    if a.name == "value":
        return tensor_to_array(a.t)
    if a.name == "sparse_value":
        return np.array(numpy_helper.to_array(a.sparse_tensor))
    table = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if a.name in table:
        return np.array(onnx.helper.get_attribute_value(a), dtype=table[a.name])
    raise ModelLoadError(f"Constant node {node.name!r} holds a {a.name}, which kiln cannot compute with "
                         "(string tensors are not supported).")

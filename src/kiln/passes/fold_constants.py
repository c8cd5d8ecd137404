"""Constant folding: evaluate at build time what does not depend on the inputs.

  op(c1, ..., cn)                    -> c            (reference op, on CPU)
  Shape(x)[start:end], dims static   -> int64 constant
  Gather(Shape(x), c), picked static -> int64 constant
  Slice(Shape(x), s, e), picked static -> int64 constant
  Size(x), x static                  -> int64 constant

A folded node's output Values become the constants themselves (`Value.const` is set
and the node removed), so names and uses, graph outputs included, are kept.
Needs nothing before it; run eliminate_dead_code after it to drop what it orphans.
"""
from __future__ import annotations

import numpy as np
import torch

from kiln.errors import UnsupportedOpError
from kiln.ir.dtypes import from_torch
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.shapes import Shape, is_static, numel
from kiln.kernels.reference.interpret import as_tensor, evaluate_node
from kiln.passes.match import const_array
from kiln.passes.shape_values import gathered_dims, shape_slice, sliced_dims

# Folding must give the same answer on every run.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"}

# A folded result larger than this is kept only if it is no larger than its inputs:
# folding ConstantOfShape/Expand/Tile would otherwise bloat the engine file.
MAX_FOLDED_BYTES = 64 << 20


def fold_constants(graph: Graph) -> bool:
    """Replace nodes computable from constants (and static shapes) by constants."""
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue
        folded = _fold_shape_arithmetic(node)
        if folded is None and _foldable(node):
            folded = _evaluate(node)
        if folded is not None:
            graph.remove_node(node)
            for out, value in zip(node.outputs, folded):
                _become_constant(out, value)
            changed = True
    return changed


def _foldable(node: Node) -> bool:
    if node.domain == "" and node.op in NONDETERMINISTIC:
        return False
    if any(isinstance(a, Graph) or (isinstance(a, list) and any(isinstance(g, Graph) for g in a))
           for a in node.attrs.values()):
        return False
    return all(v is None or v.is_const for v in node.inputs)


def _nbytes(t: np.ndarray | torch.Tensor) -> int:
    return t.nbytes if isinstance(t, np.ndarray) else t.numel() * t.element_size()


def _predicted_bytes(node: Node) -> int | None:
    """Output size of the blow-up ops, computed before running them."""
    ins = [const_array(v) for v in node.inputs]
    if node.op == "ConstantOfShape":
        return int(np.prod(ins[0])) * 8
    if node.op == "Expand":
        return int(np.prod(np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1])))) * ins[0].itemsize
    if node.op == "Tile":
        return ins[0].nbytes * int(np.prod(ins[1]))
    out = node.outputs[0]
    if is_static(out.shape) and out.dtype is not None:
        return numel(out.shape) * out.dtype.itemsize
    return None


def _evaluate(node: Node) -> list[torch.Tensor] | None:
    in_bytes = sum(_nbytes(v.const) for v in node.inputs if v is not None)
    predicted = _predicted_bytes(node)
    if predicted is not None and predicted > MAX_FOLDED_BYTES and predicted > in_bytes:
        return None
    try:
        results = evaluate_node(node, [as_tensor(v.const) if v is not None else None for v in node.inputs])
    except UnsupportedOpError:
        return None
    if len(results) < len(node.outputs) or not all(isinstance(t, torch.Tensor) for t in results):
        return None  # sequences and optionals stay runtime values
    if sum(_nbytes(t) for t in results) > max(MAX_FOLDED_BYTES, in_bytes):
        return None
    return [t.contiguous() for t in results[:len(node.outputs)]]


def _fold_shape_arithmetic(node: Node) -> list[torch.Tensor] | None:
    if node.domain != "":
        return None
    dims: Shape | None = None
    if node.op == "Shape":
        dims = shape_slice(node)
    elif node.op == "Size" and is_static(node.input(0).shape):
        return [torch.tensor(numel(node.input(0).shape), dtype=torch.int64)]
    elif node.op == "Gather":
        dims = gathered_dims(node)
    elif node.op == "Slice":
        dims = sliced_dims(node)
    if dims is None or not is_static(dims):
        return None
    if node.op == "Gather":
        idx = const_array(node.input(1))
        return [torch.tensor(dims, dtype=torch.int64).reshape(idx.shape)]
    return [torch.tensor(dims, dtype=torch.int64).reshape(len(dims))]


def _become_constant(out: Value, data: torch.Tensor) -> None:
    # Keep the declared dtype when it is a view of the same torch type (int4 is held as int8).
    dtype = from_torch(data.dtype)
    if out.dtype is None or out.dtype.torch_name is None or out.dtype.torch != data.dtype:
        out.dtype = dtype
    out.shape = tuple(data.shape)
    out.const = data

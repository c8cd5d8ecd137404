"""What an integer shape tensor holds, read from the ops that built it: dims, symbols included.

Exporters compute a Reshape's or an Expand's target at run time from the shapes of other
tensors: Concat(Unsqueeze(Gather(Shape(x), 0)), [128, -1, 64]) is [x's dim 0, 128, -1, 64],
and Range(0, Gather(Shape(x), 0), 1) has x's dim 0 elements. Where a dim is symbolic ("batch")
the value is that symbol: refine_shapes uses it to carry the symbol on, and to cancel it
when it fixes a Reshape's -1. Entries nothing fixes are None. Read-only: no node is changed.
"""
from __future__ import annotations

from kiln.ir.graph import Node, Value
from kiln.passes.match import const_ints, produced_by

Entry = int | str | None


def vector_dims(v: Value | None) -> list[Entry] | None:
    """The entries of the 1-D int tensor `v` (None where unknown), or None when even its length
    is not known."""
    if v is None or v.shape is None or len(v.shape) != 1 or not isinstance(v.shape[0], int) or _float(v):
        return None
    n = v.shape[0]
    values = const_ints(v)
    if values is not None:
        return list(values)
    node = v.producer()
    found: list[Entry] | None = None
    if node is None or node.domain:
        found = None
    elif node.op == "Shape":
        dims = shape_slice(node)
        found = list(dims) if dims is not None else None
    elif node.op == "Slice":
        dims = sliced_dims(node)
        found = list(dims) if dims is not None else None
    elif node.op == "Gather" and node.inputs[1] is not None and node.inputs[1].shape == (n,):
        dims = gathered_dims(node)
        found = list(dims) if dims is not None else None
    elif node.op == "Unsqueeze" and node.inputs[0] is not None and node.inputs[0].shape == ():
        found = [scalar_dim(node.inputs[0])]
    elif node.op == "Concat":
        found = []
        for part in node.inputs:
            dims = vector_dims(part)
            if dims is None:
                if part is None or part.shape is None or len(part.shape) != 1 or not isinstance(part.shape[0], int):
                    return [None] * n
                dims = [None] * part.shape[0]
            found += dims
    elif node.op == "Where":
        found = _where_minus_one(node)
    return found if found is not None and len(found) == n else [None] * n


def scalar_dim(v: Value | None) -> Entry:
    """The value of the int scalar `v`: a constant, or one dim of a tensor's shape read back
    (Gather(Shape(x), k) with a constant k): x's dim k, a symbol where it is one."""
    if v is None or _float(v):
        return None
    values = const_ints(v)
    if values is not None:
        return values[0] if len(values) == 1 else None
    node = v.producer()
    dims = gathered_dims(node) if node is not None else None
    return dims[0] if dims is not None and len(dims) == 1 else None


def shape_slice(node: Node) -> tuple[Entry, ...] | None:
    """The dims a Shape node returns (its start and end applied as ONNX defines them: negative
    counts from the rank, clamped), when its input's rank is known."""
    x = node.input(0)
    if node.qualified_op != "Shape" or x is None or x.shape is None:
        return None
    return tuple(x.shape[node.attrs.get("start", 0):node.attrs.get("end")])


def gathered_dims(node: Node) -> tuple[Entry, ...] | None:
    """Gather(Shape(x), indices) along axis 0 with constant indices: the dims picked."""
    if node.qualified_op != "Gather" or node.attrs.get("axis", 0) not in (0, -1):
        return None
    source = produced_by(node.input(0), "Shape")
    idx = const_ints(node.input(1))
    dims = shape_slice(source) if source is not None else None
    if dims is None or idx is None or any(not -len(dims) <= i < len(dims) for i in idx):
        return None
    return tuple(dims[i] for i in idx)


def sliced_dims(node: Node) -> tuple[Entry, ...] | None:
    """Slice(Shape(x), starts, ends[, axes=[0], steps=[1]]) with constant bounds: the dims picked."""
    if node.qualified_op != "Slice":
        return None
    source = produced_by(node.input(0), "Shape")
    starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
    axes = const_ints(node.input(3)) if node.input(3) is not None else [0]
    steps = const_ints(node.input(4)) if node.input(4) is not None else [1]
    if source is None or starts is None or ends is None or axes not in ([0], [-1]) or steps != [1]:
        return None
    dims = shape_slice(source)
    return None if dims is None else tuple(dims[starts[0]:ends[0]])


def _where_minus_one(node: Node) -> list[Entry] | None:
    """Where(Equal(t, -1), a, t), the exporters' way to turn an expand's -1 into a's value: t's
    entries where they are dims (a symbol or an int other than -1), a's where t's is -1."""
    cond, a, t = node.input(0), node.input(1), node.input(2)
    test = cond.producer() if cond is not None else None
    if test is None or test.op != "Equal" or test.domain or t is None or t not in test.inputs:
        return None
    minus = const_ints(test.inputs[1] if test.inputs[0] is t else test.inputs[0])
    if not minus or any(m != -1 for m in minus):
        return None
    dims = vector_dims(t)
    if dims is None:
        return None
    single = const_ints(a) if a is not None and a.shape == () else None
    fill = single * len(dims) if single else vector_dims(a)
    return [d if isinstance(d, str) or isinstance(d, int) and d != -1 else
            fill[i] if fill is not None and len(fill) == len(dims) and d == -1 else None for i, d in enumerate(dims)]


def _float(v: Value) -> bool:
    """A float tensor: not a shape (its values would be truncated by const_ints)."""
    return v.dtype is not None and v.dtype.is_float

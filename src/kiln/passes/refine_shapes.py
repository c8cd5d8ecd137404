"""Turn symbolic dims that the graph itself fixes into static ones.

ONNX shape inference propagates constants through shape arithmetic only partly (its data
propagation has no Div), so an exporter's `C // heads` leaves the head size symbolic:
  Reshape(qkv, Concat(batch, 197, 3, 12, Div(Gather(Shape(x), 2), 12)))  ->  [B, 197, 3, 12, ?]
Once fold_constants has folded the Div branch, the shape input holds constants in every
position but the batch, and this pass writes them into the output's dims. It then carries
static dims forward through the ops that only move dims (Transpose, Squeeze, Unsqueeze,
Slice and Gather on other axes, element-wise unary ops), so that Shape(...) of a head tensor folds and
the attention scale sqrt(head size) becomes a constant the attention matcher can read. It
also recomputes broadcasting (ONNX inference leaves 1 against a symbolic dim unknown, so a
batch-1 model's embedding sum [1, S, H] + [?, S, H] stays [?, S, H] after the ? is fixed), and
the dims of Concat, Expand, norms and matmuls from their inputs: a static batch of 1 then folds
its shape arithmetic as a larger batch does. The pass runs in the cleanup rounds, before any
fusion, so it reads ai.onnx nodes only (passes/match.py: live_nodes).

Symbols too: a symbolic dim the op's definition equates with an input's symbolic dim takes
that symbol (ONNX's convention: one name, one value). ONNX inference names a dim it cannot
relate to its inputs afresh (unk__N), so a dynamic batch reaches an attention as unk__7 while
the profile binds only the input's "batch"; carried forward, the batch is "batch" throughout,
the tuner sees every shape at the profile's points, and a Reshape's -1 is fixed where its
other dims' symbols cancel against its input's ([batch, 128, 384] to [batch, 128, -1, 32]:
12 heads), as they do for a batch-1 or static-batch model.

Sound by construction: a dim is refined only from what the op's definition fixes (a
positive constant entry of a Reshape shape, a permutation, a symbol the op carries over,
...); a symbolic dim becomes an int or an equal symbol, an int is never changed, and a rank
is never changed. Part of the cleanup loop: each refinement can let fold_constants fold more.
"""
from __future__ import annotations

import math
from typing import Callable

from kiln.ir.graph import Graph, Node, Value
from kiln.ir.shapes import Shape
from kiln.passes.match import const_ints, live_nodes
from kiln.passes.shape_values import scalar_dim, vector_dims

UNARY = frozenset({"Relu", "Sigmoid", "Tanh", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Identity",
                   "Cast", "Softmax", "LeakyRelu", "Clip", "Reciprocal", "Floor", "Ceil", "Round", "Sign"})


# Element-wise ops whose output is the broadcast of their inputs (one output).
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Where", "And", "Or", "Xor", "Equal", "Less",
                       "LessOrEqual", "Greater", "GreaterOrEqual", "Max", "Min", "Sum", "Mean", "PRelu",
                       "BitShift"})
# Ops whose first output has the shape of input 0 (Mean/InvStdDev do not).
SAME_AS_INPUT = frozenset({"LayerNormalization", "RMSNormalization"})


def refine_shapes(graph: Graph) -> bool:
    changed = False
    for node in live_nodes(graph):
        rule = RULES.get(node.op) or (_same_as_input if node.op in UNARY else None)
        if rule is None or not node.outputs or node.outputs[0].shape is None or node.input(0) is None:
            continue
        dims = rule(node)
        if dims is not None:
            changed |= _refine(node.outputs[0], dims)
    return changed


UNKNOWN = "?"  # a rule's "this dim is not fixed by the op"


def _refine(v: Value, dims: Shape) -> bool:
    """Write the int and symbolic dims of `dims` (not UNKNOWN) into v's symbolic ones (same rank
    only); True if any changed."""
    old = v.shape
    if old is None or len(old) != len(dims):
        return False
    new = tuple(d if isinstance(d, int) else n if isinstance(n, int) and n >= 0 or isinstance(n, str) and n != UNKNOWN
                else d for d, n in zip(old, dims))
    if new == tuple(old):
        return False
    v.shape = new
    return True


def _reshape(node: Node) -> Shape | None:
    """The shape input's known entries (shape_values.vector_dims): a positive one or a symbol is
    the dim; 0 copies X's dim there (allowzero 0); an unknown one keeps the output's dim; -1 is
    what X's size leaves (_leftover)."""
    entries = vector_dims(node.input(1))
    if entries is None:
        return None
    x = node.input(0).shape
    copy = not node.attrs.get("allowzero", 0)
    out = node.outputs[0].shape
    dims: list[int | str] = []
    for i, e in enumerate(entries):
        if isinstance(e, str) or e is not None and e > 0:
            dims.append(e)
        elif e == 0 and copy and x is not None and i < len(x):
            dims.append(x[i])
        elif e is None and out is not None and len(out) == len(entries):
            dims.append(out[i])   # a computed entry: the dim the output already has (ONNX's, or refined)
        else:
            dims.append(UNKNOWN)
    if entries.count(-1) == 1 and x is not None:
        i = entries.index(-1)
        dims[i] = _leftover(x, [d for j, d in enumerate(dims) if j != i])
    return tuple(dims)


def _leftover(x: Shape, others: list[int | str]) -> int | str:
    """A Reshape's -1: X's size over the other dims' product, once the symbols the two have in
    common cancel (each symbol of `others` against one equal symbol of X); UNKNOWN where a symbol
    is left on either side or the division is not exact."""
    left = list(x)
    ints: list[int] = []
    for d in others:
        if isinstance(d, int):
            ints.append(d)
        elif d != UNKNOWN and d in left:
            left.remove(d)
        else:
            return UNKNOWN
    if not all(isinstance(d, int) for d in left):
        return UNKNOWN
    size, rest = math.prod(left), math.prod(ints)
    return size // rest if rest > 0 and size % rest == 0 else UNKNOWN


def _transpose(node: Node) -> Shape | None:
    x = node.input(0).shape
    if x is None:
        return None
    perm = node.attrs.get("perm") or list(reversed(range(len(x))))
    return tuple(x[p] for p in perm) if len(perm) == len(x) else None


def _squeeze(node: Node) -> Shape | None:
    x = node.input(0).shape
    axes = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("axes")
    if x is None or axes is None:
        return None
    drop = {a + len(x) if a < 0 else a for a in axes}
    return tuple(d for i, d in enumerate(x) if i not in drop)


def _unsqueeze(node: Node) -> Shape | None:
    x = node.input(0).shape
    axes = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("axes")
    if x is None or axes is None:
        return None
    rank = len(x) + len(axes)
    ones = {a + rank if a < 0 else a for a in axes}
    it = iter(x)
    return tuple(1 if i in ones else next(it) for i in range(rank))


def _slice(node: Node) -> Shape | None:
    """Dims of the axes the Slice does not cut; a cut axis [0, s) with step 1, s a dim read back
    from a shape (a model's position ids cut to its sequence: position_ids[:, :seq]) whose
    profile bounds (graph.dim_bounds) keep it within the axis' static size, is s long. Other cut
    axes stay as they are."""
    x = node.input(0).shape
    axes = const_ints(node.input(3)) if node.input(3) is not None else None
    starts = const_ints(node.input(1))
    if x is None or starts is None:
        return None
    order = [a + len(x) if a < 0 else a for a in (axes if axes is not None else range(len(starts)))]
    dims = [UNKNOWN if i in order else d for i, d in enumerate(x)]
    ends = vector_dims(node.input(2))
    steps = const_ints(node.input(4)) if node.input(4) is not None else [1] * len(starts)
    bounds = node.graph.dim_bounds if node.graph is not None else {}
    if ends is not None and steps is not None and len(ends) == len(starts) == len(steps) == len(order):
        for i, start, end, step in zip(order, starts, ends, steps):
            if (start == 0 and step == 1 and 0 <= i < len(x) and isinstance(x[i], int) and isinstance(end, str)
                    and end in bounds and 0 <= bounds[end][0] and bounds[end][1] <= x[i]):
                dims[i] = end
    return tuple(dims)


def _gather(node: Node) -> Shape | None:
    """data[..., indices, ...] along `axis`: the other axes' dims, the indices' shape in between."""
    x, idx = node.input(0).shape, node.input(1).shape if node.input(1) is not None else None
    if x is None or idx is None:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(x) if axis < 0 else axis
    return (*x[:axis], *idx, *x[axis + 1:])


def _same_as_input(node: Node) -> Shape | None:
    return node.input(0).shape


def _broadcast_dims(shapes: list[Shape]) -> Shape:
    """Multidirectional broadcasting, dim by dim from the right: a dim other than 1 in any shape
    fixes the result's (valid broadcasting allows no other), all 1 give 1, one symbol against
    1s only gives that symbol (1 if it is 1), else unknown."""
    rank = max(len(sh) for sh in shapes)
    out: list[int | str] = []
    for i in range(rank):
        dims = [sh[len(sh) - rank + i] for sh in shapes if len(sh) - rank + i >= 0]
        fixed = [d for d in dims if isinstance(d, int) and d != 1]
        symbols = {d for d in dims if isinstance(d, str)}
        out.append(fixed[0] if fixed else 1 if all(d == 1 for d in dims) else
                   symbols.pop() if len(symbols) == 1 and UNKNOWN not in symbols else UNKNOWN)
    return tuple(out)


def _broadcast(node: Node) -> Shape | None:
    shapes = [v.shape for v in node.inputs if v is not None]
    if not shapes or any(sh is None for sh in shapes):
        return None
    return _broadcast_dims(shapes)


def _expand(node: Node) -> Shape | None:
    """X broadcast against the target shape (its entries as far as known: shape_values.py)."""
    x, target = node.input(0).shape, vector_dims(node.input(1))
    if x is None or target is None:
        return None
    return _broadcast_dims([x, tuple(UNKNOWN if d is None or isinstance(d, int) and d < 0 else d for d in target)])


def _range(node: Node) -> Shape | None:
    """Range(0, n, 1): n elements, n a constant or a dim read back from a shape."""
    if const_ints(node.input(0)) != [0] or const_ints(node.input(2)) != [1]:
        return None
    n = scalar_dim(node.input(1))
    return (n,) if isinstance(n, str) or isinstance(n, int) and n >= 0 else None


def _concat(node: Node) -> Shape | None:
    """The inputs' sizes along `axis` summed (when all known); any input's dim elsewhere (a valid
    Concat has them equal)."""
    shapes = [v.shape for v in node.inputs if v is not None]
    if not shapes or any(sh is None for sh in shapes) or len({len(sh) for sh in shapes}) != 1 or not shapes[0]:
        return None
    rank = len(shapes[0])
    axis = int(node.attrs.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        return None
    out: list[int | str] = []
    for i in range(rank):
        dims = [sh[i] for sh in shapes]
        if i == axis:
            out.append(sum(dims) if all(isinstance(d, int) for d in dims) else UNKNOWN)
        else:
            out.append(next((d for d in dims if isinstance(d, int)), next(iter(dims))))
    return tuple(out)


def _matmul(node: Node) -> Shape | None:
    """A [..., M, K] @ B [..., K, N]: the broadcast batch dims, M, N (ranks >= 2)."""
    a, b = node.input(0).shape, node.input(1).shape if node.input(1) is not None else None
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    batch = _broadcast_dims([a[:-2], b[:-2]]) if len(a) > 2 or len(b) > 2 else ()
    return (*batch, a[-2], b[-1])


def _reduce(node: Node) -> Shape | None:
    """Reduce*: the kept axes' dims, a reduced axis 1 (keepdims) or gone; axes from the input
    (opset 18) or the attribute (earlier ReduceSum takes them as an input since 13)."""
    x = node.input(0).shape
    if x is None:
        return None
    axes = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("axes")
    if axes is None and node.input(1) is not None:
        return None   # axes computed at run time
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(len(x)))
    drop = {a + len(x) if a < 0 else a for a in axes}
    if node.attrs.get("keepdims", 1):
        return tuple(1 if i in drop else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in drop)


def _flatten(node: Node) -> Shape | None:
    """Flatten: [prod(dims before axis), prod(dims from axis)], each side's product where its
    dims are ints but at most one symbol beside 1s (that symbol)."""
    x = node.input(0).shape
    if x is None:
        return None
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(x) if axis < 0 else axis
    return (_product(x[:axis]), _product(x[axis:])) if 0 <= axis <= len(x) else None


def _product(dims: Shape) -> int | str:
    symbols = [d for d in dims if isinstance(d, str)]
    if not symbols:
        return math.prod(dims)
    if len(symbols) == 1 and all(d == 1 for d in dims if isinstance(d, int)) and symbols[0] != UNKNOWN:
        return symbols[0]
    return UNKNOWN


REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

RULES: dict[str, Callable[[Node], Shape | None]] = {
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Gather": _gather,
    "MatMul": _matmul,
    "Expand": _expand,
    "Concat": _concat,
    "Range": _range,
    "Flatten": _flatten,
    **{op: _reduce for op in REDUCE},
    **{op: _broadcast for op in BROADCAST},
    **{op: _same_as_input for op in SAME_AS_INPUT},
}

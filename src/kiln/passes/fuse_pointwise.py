"""Fuse trees of element-wise ops into one kiln::Pointwise node.

  f(g(x, y), h(y))                      -> kiln::Pointwise(x, y, program=[g, h, f])
A group grows from a root (visited in reverse topological order) towards its inputs:
a producer joins when it is element-wise and every reader of its output is already in
the group (and the output is not pinned), so only the root's output leaves the group.
That rule also makes the fusion acyclic: any path out of a member runs through the root.
One-element constants are inlined as rank-0 scalars when they cannot widen the shape
(their rank is at most the output's); other captured tensors become node inputs.
QuantizeLinear and DequantizeLinear join as element-wise ops where they are per tensor with
constant parameters and int8/uint8 codes (`_per_tensor_bytes`): an explicitly quantized
model's DQ -> Add -> Q around a residual add becomes one kernel. The
program format is documented in kiln.kernels.reference.fused. Groups of one op stay, except a
DequantizeLinear alone (such as the codes of a quantized model's last conv on their way to its
float head), which has no kernel of its own: a one-op program is its kernel.
Run last among the fusions: it would otherwise swallow epilogues and the
LayerNorm/Gelu/Softmax/Attention patterns that other passes own.
"""
from __future__ import annotations

import json
from typing import Any

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import const_array, pinned, rank, replace_nodes

UNARY = {"Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
         "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
         "Erf", "Not", "IsNaN", "IsInf", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid",
         "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Tanh", "Gelu", "Mish",
         "ThresholdedRelu", "Shrink", "Identity", "Cast", "CastLike", "BitwiseNot"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "PRelu", "And", "Or", "Xor", "Equal",
          "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "BitShift", "BitwiseAnd",
          "BitwiseOr", "BitwiseXor"}
OTHER = {"Where", "Clip", "Max", "Min", "Sum", "Mean"}
ELEMENTWISE = UNARY | BINARY | OTHER
QUANTIZE = {"QuantizeLinear", "DequantizeLinear"}   # per tensor, int8/uint8: `_per_tensor_bytes`


def fuse_pointwise(graph: Graph) -> bool:
    """Replace each maximal element-wise tree of two or more ops (or a lone per-tensor
    DequantizeLinear) by kiln::Pointwise."""
    keep = pinned(graph)
    grouped: set[int] = set()
    changed = False
    for root in reversed(list(graph.nodes)):
        if id(root) in grouped or not _fusable(root):
            continue
        members = _grow(root, grouped, keep)
        grouped |= {id(n) for n in members}
        if len(members) >= 2 or root.op == "DequantizeLinear":
            _replace(graph, members)
            changed = True
    return changed


def _fusable(node: Node) -> bool:
    if node.domain != "" or node.op not in ELEMENTWISE | QUANTIZE or len(node.outputs) != 1:
        return False
    if node.op in QUANTIZE and not _per_tensor_bytes(node):
        return False
    try:  # the program is JSON data: attributes must be plain
        json.dumps(node.attrs)
    except TypeError:
        return False
    return True


def _per_tensor_bytes(node: Node) -> bool:
    """A QuantizeLinear/DequantizeLinear that is element-wise with scalars: one-element constant
    scale and zero point, no blocks, int8/uint8 codes (QuantizeLinear's output, DequantizeLinear's
    input), DequantizeLinear's result in its scale's type. Such a Q/DQ chain (ONNX Runtime's
    DQ -> Add -> Q around a residual add) then runs as one kernel."""
    scale, zp = node.input(1), node.input(2)
    s = const_array(scale) if scale is not None else None
    z = const_array(zp) if zp is not None else None
    if s is None or s.size != 1 or (zp is not None and (z is None or z.size != 1)) or node.attrs.get("block_size", 0):
        return False
    codes = node.outputs[0] if node.op == "QuantizeLinear" else node.inputs[0]
    if codes.dtype is None or codes.dtype.name not in ("int8", "uint8"):
        return False
    return node.op == "QuantizeLinear" or int(node.attrs.get("output_dtype", 0) or 0) in (0, scale.dtype.onnx)


def _grow(root: Node, taken: set[int], keep: set[int]) -> list[Node]:
    """The group rooted at `root`, in topological order."""
    members = {id(root): root}
    frontier = [root]
    while frontier:
        node = frontier.pop()
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is None or id(p) in members or id(p) in taken or not _fusable(p) or id(v) in keep:
                continue
            if all(id(user) in members for user in v.consumers()):
                members[id(p)] = p
                frontier.append(p)
        # A producer refused earlier may qualify now that more readers joined.
        if not frontier:
            frontier = [m for m in list(members.values()) if _grows(m, members, taken, keep)]
    graph = root.graph
    assert graph is not None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(members.values(), key=lambda n: order[id(n)])


def _grows(node: Node, members: dict[int, Node], taken: set[int], keep: set[int]) -> bool:
    for v in node.inputs:
        p = v.producer() if v is not None else None
        if (p is not None and id(p) not in members and id(p) not in taken and _fusable(p)
                and id(v) not in keep and all(id(u) in members for u in v.consumers())):
            return True
    return False


def _scalar_ref(v: Value, out: Value) -> dict[str, Any] | None:
    arr = const_array(v)
    out_rank = rank(out)
    if arr is None or arr.size != 1 or v.dtype is None or out_rank is None or arr.ndim > out_rank:
        return None
    return {"const": arr.reshape(-1)[0].item(), "dtype": v.dtype.name}


def _replace(graph: Graph, members: list[Node]) -> None:
    refs: dict[int, Any] = {}
    inputs: list[Value] = []
    program = []
    for k, node in enumerate(members):
        args: list[Any] = []
        for v in node.inputs:
            if v is None:
                args.append(None)
            elif id(v) in refs:
                args.append(refs[id(v)])
            elif (scalar := _scalar_ref(v, node.outputs[0])) is not None:
                args.append(scalar)
            else:
                refs[id(v)] = f"i{len(inputs)}"
                inputs.append(v)
                args.append(refs[id(v)])
        program.append([node.op, args, dict(node.attrs)])
        refs[id(node.outputs[0])] = f"t{k}"
    replace_nodes(graph, members, "Pointwise", inputs, {"program": program, "n_outputs": 1}, "kiln")

"""Choose channels-last for convolution-heavy graphs, and remove the layout Transposes
that an NHWC export wrapped around every convolution.

Decision. A graph is convolution-heavy when it has at least MIN_CONVS 2-D convolutions
or they do at least CONV_FLOP_SHARE of its FLOPs (`conv_share`); then `graph.layout` is
"nhwc", else "nchw". The decision changes no node: torch's channels_last is a memory
format (strides) under the same logical NCHW shape, so the graph's meaning is the same
either way. It tells tactic selection that channels-last conv tactics
(Conv/kiln::FusedConv.cudnn_nhwc) may be used: once the first conv has converted its
input, every conv, pooling, normalisation and element-wise op downstream keeps the format,
so the region pays one conversion in, none between layers. (Layout is not a node
attribute: reference kernels take attributes as keyword arguments.)

Rewrites. p is a layout permutation of a 4-D value: (0, 2, 3, 1) (NCHW -> NHWC) or
(0, 3, 1, 2) (NHWC -> NCHW); p^-1 its inverse, T = Transpose.
  T(T(x, p), p^-1)                               -> x                     (the pair cancels)
  U(T(x, p))          U unary element-wise       -> T(U(x), p)
  E(T(a, p), T(b, p), c, s)
                      E element-wise (Add, Mul, Where, ...), c a constant, s a value of
                      one element                -> T(E(a, b, c', s), p), c' = c at rank 4
                                                    permuted by p^-1 (T(c', p) = c)
  Concat(T(a, p), T(b, p), axis=k)               -> T(Concat(a, b, axis=p[k]), p)
  Pad(T(x, p), pads)  constant pads, no axes     -> T(Pad(x, pads'), p), pads'[p[i]] = pads[i]
  R(T(x, p), axes, keepdims=1)   R a Reduce*     -> T(R(x, p[axes]), p)
  R(T(x, p), axes, keepdims=0)   kept axes stay in order under p
                                                 -> R(x, p[axes])          (no T left)
Sinking moves a Transpose down past one op so that it can meet its inverse: an NHWC
export reads T(x, (0,3,1,2)) -> Conv -> T(., (0,2,3,1)) -> Relu -> T(., (0,3,1,2)) -> Conv,
and after Relu is sunk through, the two middle Transposes cancel. A sink happens only
when one of the Transposes it reads becomes dead, so the count of Transposes never grows;
the Transpose moves strictly later in node order, so the rewrite terminates. Only the two
layout permutations sink (attention's [0, 2, 1, 3] is left for fuse_attention). The top
graph only; subgraph bodies keep their layout.

Run after the cleanup passes (constant Transposes folded, direct pairs composed) and
before fold_batchnorm and fuse_epilogues, which need Conv -> BN -> Add -> Relu adjacent.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import bypass, const_ints, drop_if_dead, live_nodes, pinned, produced_by

Perm = tuple[int, ...]
LAYOUT_PERMS: tuple[Perm, ...] = ((0, 2, 3, 1), (0, 3, 1, 2))
MIN_CONVS = 4
CONV_FLOP_SHARE = 1 / 3
MAX_ROUNDS = 16

UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Mish", "ThresholdedRelu", "Gelu", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "Floor", "Ceil",
    "Round", "Reciprocal", "Sign", "Sin", "Cos", "Not", "Identity", "Cast", "IsNaN", "IsInf", "Clip",
})
ELEMENTWISE = UNARY | frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
})
REDUCES = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceSumSquare", "ReduceLogSumExp"})


# ------------------------------------------------------------------ the decision

def _numel(shape: Any) -> int:
    # Symbolic dims count as 1: every op shares the batch dim, so the share stays meaningful.
    return 0 if shape is None else math.prod(d if isinstance(d, int) else 1 for d in shape)


def node_flops(node: Node) -> tuple[int, bool]:
    """(approximate FLOPs, whether the node is a 2-D convolution)."""
    out = node.outputs[0] if node.outputs else None
    n_out = _numel(out.shape) if out is not None else 0
    w = node.input(1)
    if node.op in ("Conv", "FusedConv", "QConv") and w is not None and w.shape is not None:
        return 2 * n_out * _numel(w.shape[1:]), len(w.shape) == 4
    a = node.input(0)
    if node.op in ("MatMul", "FusedMatMul", "Gemm") and a is not None and a.shape:
        k = a.shape[0] if node.op == "Gemm" and node.attrs.get("transA", 0) else a.shape[-1]
        return 2 * n_out * (k if isinstance(k, int) else 1), False
    if node.op == "Attention" and node.domain == "kiln" and node.input(1) is not None and node.input(1).shape:
        s_kv = node.input(1).shape[-2]
        return 4 * n_out * (s_kv if isinstance(s_kv, int) else 1), False
    return sum(_numel(o.shape) for o in node.outputs), False


def conv_share(graph: Graph) -> tuple[int, float]:
    """(number of 2-D convolutions, their share of the graph's FLOPs)."""
    convs, conv_flops, total = 0, 0, 0
    for node in graph.nodes:
        flops, is_conv = node_flops(node)
        total += flops
        if is_conv:
            convs, conv_flops = convs + 1, conv_flops + flops
    return convs, conv_flops / total if total else 0.0


def decide_layout(graph: Graph) -> str:
    convs, share = conv_share(graph)
    return "nhwc" if convs and (convs >= MIN_CONVS or share >= CONV_FLOP_SHARE) else "nchw"


def choose_layout(graph: Graph) -> bool:
    """Remove layout Transpose pairs (rules above), then set graph.layout; True if either changed."""
    changed = remove_layout_transposes(graph)
    layout = decide_layout(graph)
    if getattr(graph, "layout", "nchw") != layout:
        graph.layout = layout
        changed = True
    return changed


# ------------------------------------------------------------------ the rewrites

def _layout_perm(v: Value | None) -> tuple[Node, Perm] | None:
    """(the Transpose, its perm) when `v` is a 4-D value made by a layout Transpose."""
    t = produced_by(v, "Transpose")
    if t is None or t.attrs.get("perm") is None:
        return None
    perm = tuple(int(p) for p in t.attrs["perm"])
    return (t, perm) if perm in LAYOUT_PERMS else None


def _inverse(p: Perm) -> Perm:
    return tuple(int(i) for i in np.argsort(p))


def _permuted_const(graph: Graph, v: Value, p: Perm) -> Value:
    """c' with T(c', p) == c (c aligned to rank 4 first, as broadcasting would)."""
    c, inv = v.const, _inverse(p)
    shape4 = (1,) * (4 - len(c.shape)) + tuple(c.shape)
    if isinstance(c, torch.Tensor):
        data: Any = c.reshape(shape4).permute(*inv).contiguous()
    else:
        data = np.ascontiguousarray(np.transpose(np.asarray(c).reshape(shape4), inv))
    return graph.constant(data, v.name)


def _operands(graph: Graph, node: Node, indices: range, p: Perm) -> list[Value | None] | None:
    """The node's inputs at `indices` as read before the Transpose p, or None if one can't be."""
    out: list[Value | None] = []
    for i in indices:
        v = node.input(i)
        found = _layout_perm(v)
        if v is None:
            out.append(None)
        elif found is not None and found[1] == p:
            out.append(found[0].input(0))
        elif v.shape is not None and len(v.shape) <= 4 and all(d == 1 for d in v.shape):
            out.append(v)  # one element broadcasts the same in any layout
        elif v.is_const and v.shape is not None and len(v.shape) <= 4:
            out.append(_permuted_const(graph, v, p))
        else:
            return None
    return out


# A rule gets (graph, node, p) and returns (new inputs, new attrs, whether a T follows) or None.
Rule = Callable[[Graph, Node, Perm], tuple[list[Value | None], dict[str, Any], bool] | None]


def _elementwise(graph: Graph, node: Node, p: Perm):
    ins = _operands(graph, node, range(len(node.inputs)), p)
    return None if ins is None else (ins, dict(node.attrs), True)


def _concat(graph: Graph, node: Node, p: Perm):
    ins = _operands(graph, node, range(len(node.inputs)), p)
    axis = int(node.attrs.get("axis", 0)) % 4
    return None if ins is None else (ins, dict(node.attrs, axis=p[axis]), True)


def _pad(graph: Graph, node: Node, p: Perm):
    if node.input(3) is not None:   # explicit axes: not worth the bookkeeping
        return None
    pads = const_ints(node.input(1)) if node.input(1) is not None else node.attrs.get("pads")
    if pads is None or len(pads) != 8:
        return None
    new = [0] * 8
    for i in range(4):
        new[p[i]], new[4 + p[i]] = int(pads[i]), int(pads[4 + i])
    attrs, ins = dict(node.attrs), list(node.inputs)
    ins[0] = _layout_perm(node.input(0))[0].input(0)
    if node.input(1) is not None:
        ins[1] = graph.constant(np.asarray(new, dtype=np.int64), node.input(1).name)
    else:
        attrs["pads"] = new
    return ins, attrs, True


def _reduce(graph: Graph, node: Node, p: Perm):
    from_input = node.input(1) is not None
    axes = const_ints(node.input(1)) if from_input else node.attrs.get("axes")
    if not axes:                    # reduce-all and noop_with_empty_axes: leave them
        return None
    axes = sorted({int(a) % 4 for a in axes})
    new_axes = sorted(p[a] for a in axes)
    keepdims = int(node.attrs.get("keepdims", 1))
    if not keepdims:
        kept = [p[i] for i in range(4) if i not in axes]
        if kept != sorted(kept):    # the result's axes would come out in another order
            return None
    attrs, ins = dict(node.attrs), list(node.inputs)
    ins[0] = _layout_perm(node.input(0))[0].input(0)
    if from_input:
        ins[1] = graph.constant(np.asarray(new_axes, dtype=np.int64), node.input(1).name)
    else:
        attrs["axes"] = new_axes
    return ins, attrs, bool(keepdims)


RULES: dict[str, Rule] = {**{op: _elementwise for op in ELEMENTWISE}, "Concat": _concat, "Pad": _pad,
                          **{op: _reduce for op in REDUCES}}


def _cancel(graph: Graph, node: Node, keep: set[int]) -> bool:
    """T(T(x, p1), p2) -> x when p1[p2] is the identity."""
    inner = produced_by(node.input(0), "Transpose")
    p1, p2 = inner and inner.attrs.get("perm"), node.attrs.get("perm")
    if inner is None or p1 is None or p2 is None or len(p1) != len(p2):
        return False
    if [int(p1[int(j)]) for j in p2] != list(range(len(p2))) or not bypass(graph, node, inner.input(0), keep):
        return False
    drop_if_dead(graph, inner, keep)
    return True


def _sink(graph: Graph, node: Node, keep: set[int]) -> bool:
    """Move the layout Transpose(s) `node` reads to after it (RULES), when one goes dead."""
    rule = RULES.get(node.op)
    if rule is None or node.domain or len(node.outputs) != 1:
        return False
    found = [f for f in map(_layout_perm, node.inputs) if f is not None]
    if not found or (node.op not in ELEMENTWISE and _layout_perm(node.input(0)) is None):
        return False   # Pad, Concat's peers and Reduce* must read the Transpose as their data
    out, p = node.outputs[0], found[0][1]
    if out.shape is None or (node.op in ELEMENTWISE and len(out.shape) != 4):
        return False
    freed = [t for t, q in found if q == p and id(t.outputs[0]) not in keep
             and all(u is node for u, _ in t.outputs[0].uses())]
    plan = rule(graph, node, p)
    if plan is None or (plan[2] and not freed):
        return False
    ins, attrs, transpose_after = plan
    node.set_inputs(ins)
    node.attrs = attrs
    if transpose_after:
        # T(mid, p)[i] = mid[p[i]] must be out[i], so mid's dim j is out's dim p^-1[j].
        inv = _inverse(p)
        mid = graph.value(f"{out.name}_{'nchw' if p == LAYOUT_PERMS[0] else 'nhwc'}", out.dtype,
                          tuple(out.shape[inv[j]] for j in range(4)))
        node.outputs[0], mid._producer, out._producer = mid, node, None
        after = graph.nodes[graph.nodes.index(node) + 1] if graph.nodes[-1] is not node else None
        graph.add_node(Node("Transpose", [mid], [out], {"perm": list(p)}, name=graph.unique_name("Transpose")),
                       before=after)
    # (keepdims=0 Reduce*: out is unchanged, as the kept axes keep their order.)
    for t in {id(t): t for t, _ in found}.values():
        drop_if_dead(graph, t, keep)
    return True


def remove_layout_transposes(graph: Graph) -> bool:
    """Sink layout Transposes through layout-agnostic ops and cancel inverse pairs."""
    changed = False
    for _ in range(MAX_ROUNDS):
        keep = pinned(graph)
        round_changed = False
        for node in live_nodes(graph):
            if node.op == "Transpose" and _cancel(graph, node, keep):
                round_changed = True
            elif _sink(graph, node, keep):
                round_changed = True
        if not round_changed:
            break
        changed = True
    return changed

"""Fuse bias, residual and activation epilogues into Conv and MatMul/Gemm.

  act(Conv(x, W, b) + c + r)            -> kiln::FusedConv(x, W, b + c, r, activation=act)
  act(MatMul(a, B) + c + r)             -> kiln::FusedMatMul(a, B, c, r, activation=act)
  act(Gemm(a, B, C, alpha, beta, transA=0, transB) + ...)
                                        -> kiln::FusedMatMul(a, B, beta*C, ..., trans_b=transB, alpha)
c is a constant per output channel (Conv: dim 1; MatMul: last dim), r any value of the
layer output's shape, act one of ACTIVATION_PARAMS or x * Sigmoid(x) (Silu). Each step
is optional, in this order; at least one must be present. An intermediate is absorbed
only when the next step is its sole reader and it is not a graph output.
Run after fold_batchnorm and fuse_gelu (so Gelu is one node), before fuse_pointwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import (const_array, live_nodes, new_const, other_input, pinned, rank, replace_nodes,
                               scalar_const, sole_user)


def _clip_params(node: Node) -> list[float] | None:
    lo, hi = scalar_const(node.input(1)), scalar_const(node.input(2))
    # An omitted bound would need an infinite parameter; Clip(x, 0) alone is Relu.
    if lo is None or hi is None:
        return None
    return [lo, hi]


# op -> its activation parameters (as FusedConv's `activation_params`), None when unfusable.
ACTIVATION_PARAMS: dict[str, Callable[[Node], list[float] | None]] = {
    "Relu": lambda n: [],
    "LeakyRelu": lambda n: [float(n.attrs.get("alpha", 0.01))],
    "Clip": _clip_params,
    "Sigmoid": lambda n: [],
    "HardSigmoid": lambda n: [float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))],
    "HardSwish": lambda n: [],
    "Tanh": lambda n: [],
    "Gelu": lambda n: [1.0 if n.attrs.get("approximate", "none") == "tanh" else 0.0],
}


@dataclass
class Epilogue:
    bias: np.ndarray | Value | None    # per-channel vector (float64) or a runtime value
    residual: Value | None
    nodes: list[Node] = field(default_factory=list)
    activation: str = ""
    params: list[float] = field(default_factory=list)


def fuse_epilogues(graph: Graph) -> bool:
    """Turn Conv/MatMul/Gemm plus their epilogue into kiln::FusedConv/FusedMatMul."""
    keep = pinned(graph)
    changed = False
    for node in live_nodes(graph, "Conv", "MatMul", "Gemm"):
        if node.op == "Conv":
            changed |= _fuse_conv(graph, node, keep)
        elif node.op in ("MatMul", "Gemm"):
            changed |= _fuse_matmul(graph, node, keep)
    return changed


def channel_vector(c: Value, out: Value, axis: int, channels: int | None) -> np.ndarray | None:
    """c as a [channels] vector when it is a constant varying along `axis` of `out` only."""
    arr, r = const_array(c), rank(out)
    if arr is None or r is None or channels is None or arr.ndim > r or c.dtype != out.dtype:
        return None
    padded = (1,) * (r - arr.ndim) + arr.shape
    axis = axis % r
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, channels):
        return None
    return np.broadcast_to(arr.astype(np.float64).reshape(-1), (channels,)).copy()


def collect_epilogue(graph: Graph, out: Value, ep: Epilogue, keep: set[int],
             as_bias: Callable[[Value], np.ndarray | None]) -> Epilogue:
    cur, user = out, sole_user(out, keep)
    if _is(user, "Add") and not isinstance(ep.bias, Value):
        vec = as_bias(other_input(user, cur)) if other_input(user, cur) is not None else None
        if vec is not None:
            ep.bias = vec if ep.bias is None else ep.bias + vec
            ep.nodes.append(user)
            cur, user = user.outputs[0], sole_user(user.outputs[0], keep)
    if _is(user, "Add") and ep.residual is None:
        r = other_input(user, cur)
        if r is not None and r.shape is not None and r.shape == cur.shape and r.dtype == cur.dtype:
            ep.residual = r
            ep.nodes.append(user)
            cur, user = user.outputs[0], sole_user(user.outputs[0], keep)
    if _is(user, *ACTIVATION_PARAMS):
        params = ACTIVATION_PARAMS[user.op](user)
        if params is not None:
            ep.activation, ep.params = user.op, params
            ep.nodes.append(user)
    elif (silu := _silu(cur, keep)) is not None:
        ep.activation = "Silu"
        ep.nodes += silu
    return ep


def _is(node: Node | None, *ops: str) -> bool:
    return node is not None and node.domain == "" and node.op in ops


def _silu(y: Value, keep: set[int]) -> list[Node] | None:
    """[Sigmoid, Mul] when y's only readers compute y * Sigmoid(y)."""
    users = y.consumers()
    if id(y) in keep or len(users) != 2 or len(y.uses()) != 2:
        return None
    sig = next((n for n in users if _is(n, "Sigmoid")), None)
    mul = next((n for n in users if _is(n, "Mul")), None)
    if sig is None or mul is None or sole_user(sig.outputs[0], keep) is not mul:
        return None
    return [sig, mul] if other_input(mul, y) is sig.outputs[0] else None


def _fuse_conv(graph: Graph, conv: Node, keep: set[int]) -> bool:
    out, w = conv.outputs[0], conv.input(1)
    channels = w.shape[0] if w.shape is not None and isinstance(w.shape[0], int) else None
    b = conv.input(2)
    base = None if b is None else (const_array(b).astype(np.float64).reshape(-1) if b.is_const else b)
    ep = collect_epilogue(graph, out, Epilogue(base, None), keep, lambda c: channel_vector(c, out, 1, channels))
    if not ep.nodes:
        return False
    bias = bias_value(graph, ep, out, [w, b, *(v for n in ep.nodes for v in n.inputs)])
    if bias is False:
        return False
    attrs = dict(conv.attrs, activation=ep.activation, activation_params=ep.params)
    replace_nodes(graph, [conv, *ep.nodes], "FusedConv", [conv.input(0), w, bias, ep.residual], attrs, "kiln")
    return True


def bias_value(graph: Graph, ep: Epilogue, out: Value, sources: list[Value | None]) -> Value | None | bool:
    """The bias input of the fused node; False when no constant shows its storage type."""
    if not isinstance(ep.bias, np.ndarray):
        return ep.bias
    like = next((v.const for v in sources if v is not None and v.is_const and v.dtype == out.dtype), None)
    return False if like is None else new_const(graph, ep.bias, like, "bias")


def gemm_start(gemm: Node) -> Epilogue | None:
    """The bias/residual Gemm's own C term contributes, or None when it cannot be fused."""
    c, out = gemm.input(2), gemm.outputs[0]
    if gemm.attrs.get("transA", 0):
        return None
    if c is None:
        return Epilogue(None, None)
    beta = float(gemm.attrs.get("beta", 1.0))
    n = out.shape[-1] if out.shape is not None else None
    vec = channel_vector(c, out, -1, n if isinstance(n, int) else None)
    if vec is not None:
        return Epilogue(beta * vec, None)
    if c.shape != out.shape or (beta != 1.0 and not c.is_const):
        return None
    return Epilogue(None, c if beta == 1.0 else _scaled(gemm, c, beta))


def _scaled(gemm: Node, c: Value, beta: float) -> Value:
    graph = gemm.graph
    assert graph is not None
    return new_const(graph, const_array(c).astype(np.float64) * beta, c.const, "gemm_c")


def _fuse_matmul(graph: Graph, mm: Node, keep: set[int]) -> bool:
    start = gemm_start(mm) if mm.op == "Gemm" else Epilogue(None, None)
    if start is None:
        return False
    out = mm.outputs[0]
    n = out.shape[-1] if out.shape else None
    ep = collect_epilogue(graph, out, start, keep, lambda c: channel_vector(c, out, -1, n if isinstance(n, int) else None))
    if not ep.nodes:
        return False
    bias = bias_value(graph, ep, out, [mm.input(1), mm.input(2), *(v for n in ep.nodes for v in n.inputs)])
    if bias is False:
        return False
    attrs = {"trans_b": int(mm.attrs.get("transB", 0)), "alpha": float(mm.attrs.get("alpha", 1.0)),
             "activation": ep.activation, "activation_params": ep.params}
    replace_nodes(graph, [mm, *ep.nodes], "FusedMatMul", [mm.input(0), mm.input(1), bias, ep.residual], attrs, "kiln")
    return True

"""Fold an explicitly quantized attention chain into one kiln::QDQAttention.

ONNX Runtime's QDQ transformers (quantize_static, every op quantized) leave attention as
separate layers after the passes, each its own kernel (BERT-base b32 on an H200, ~62 us a layer):

  q8 -> [Transpose] -> Pointwise(DQ) -> qf \
  k8 -> [Transpose] -> Pointwise(DQ) -> kf^T -> MatMul -> Pointwise(Q/DQ, scale, Q/DQ, + mask, Q/DQ)
  -> Softmax -> Pointwise(Q/DQ) -> MatMul(., Pointwise(DQ)(v8 [Transpose])) -> QuantizeLinear

  ->  kiln::QDQAttention(q8, Transpose(k8^T), v8, mask, out_scale, out_zp; the five programs)

(kernels/reference/qdq_attention.py: the same reference ops in the same order, so the rewrite is
exact.) The three DQ programs each read one 8-bit [B, H, S, D] tensor alone (K as [B, H, D, S],
which a new Transpose views as keys x dims); the score program reads the scores and at most the
mask (any order: its input references are renumbered scores first); the probability program
(optional) the probabilities alone. The QuantizeLinear after the P @ V product is folded in when
it quantizes per tensor with constant parameters. Every value inside is read only inside.
Run once the types are final (after the precision policy), as the other quantized folds.
"""
from __future__ import annotations

from typing import Any

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import live_ops, only_read_by, pinned, produced_by, rank, replace_nodes, sole_user
from kiln.precision.fold_requantize import per_tensor

POINTWISE = "kiln::Pointwise"
CODES = dtypes.CODE_NAMES
SWAP_LAST = [0, 1, 3, 2]


def fuse_qdq_attention(graph: Graph) -> int:
    """Fold each chain (module docstring) into kiln::QDQAttention; the number folded."""
    keep = pinned(graph)
    return sum(_fold(graph, node, keep) for node in live_ops(graph, "MatMul"))


def _program(node: Node | None, n_inputs: int) -> list | None:
    """The program of a one-output Pointwise node with at most `n_inputs` inputs."""
    if node is None or node.qualified_op != POINTWISE or len(node.inputs) > n_inputs or len(node.outputs) != 1:
        return None
    if int(node.attrs.get("n_outputs", 1)) != 1 or node.attrs.get("outputs"):
        return None
    return node.attrs.get("program")


def _dequantized(v: Value) -> tuple[Node, Value] | None:
    """(the Pointwise, its 8-bit rank-4 input) when v is a program of one 8-bit tensor alone."""
    node = produced_by(v, POINTWISE)
    if _program(node, 1) is None or node.input(0) is None:
        return None
    src = node.input(0)
    if src.dtype is None or src.dtype.name not in CODES or rank(src) != 4:
        return None
    return node, src


def _renumbered(program: list, order: dict[str, str]) -> list:
    """The program with its input references renamed (i1 <-> i0)."""
    def ref(a: Any) -> Any:
        return order.get(a, a) if isinstance(a, str) else a
    return [[op, [ref(a) for a in args], attrs] for op, args, attrs in program]


def _scores(v: Value, nodes: list[Node]) -> tuple[Node, list | None, Value | None] | None:
    """(the Q @ K^T MatMul, the score program, the mask) behind the softmax's input."""
    qk = produced_by(v, "MatMul")
    if qk is not None:
        return qk, None, None
    node = produced_by(v, POINTWISE)
    program = _program(node, 2)
    if program is None:
        return None
    for i, inp in enumerate(node.inputs):
        qk = produced_by(inp, "MatMul")
        if qk is not None:
            mask = node.input(1 - i) if len(node.inputs) == 2 else None
            if mask is inp:   # the scores twice: not a mask
                return None
            nodes.append(node)
            return qk, (_renumbered(program, {"i0": "i1", "i1": "i0"}) if i == 1 else program), mask
    return None


def _fold(graph: Graph, out_mm: Node, keep: set[int]) -> bool:
    nodes: list[Node] = [out_mm]
    v_dq = _dequantized(out_mm.input(1))
    probs, prob_program = out_mm.input(0), None
    prob_node = produced_by(probs, POINTWISE)
    if _program(prob_node, 1) is not None and produced_by(prob_node.input(0), "Softmax") is not None:
        prob_program, probs = prob_node.attrs["program"], prob_node.input(0)
        nodes.append(prob_node)
    softmax = produced_by(probs, "Softmax")
    if v_dq is None or softmax is None or softmax.attrs.get("axis", -1) not in (-1, 3) or rank(probs) != 4:
        return False
    nodes.append(softmax)
    found = _scores(softmax.input(0), nodes)
    if found is None:
        return False
    qk, score_program, mask = found
    q_dq, kt_dq = _dequantized(qk.input(0)), _dequantized(qk.input(1))
    if q_dq is None or kt_dq is None:
        return False
    nodes += [qk, q_dq[0], kt_dq[0], v_dq[0]]
    if len({id(n) for n in nodes}) != len(nodes):   # one DQ read twice (Q @ Q^T): not this chain
        return False
    if len({d[0].outputs[0].dtype.name for d in (q_dq, kt_dq, v_dq)}) != 1:
        return False
    out_scale = out_zp = None
    attrs: dict[str, Any] = {}
    last = out_mm
    quantize = sole_user(out_mm.outputs[0], keep)
    if quantize is not None and quantize.qualified_op == "QuantizeLinear" and per_tensor(quantize):
        nodes.append(quantize)
        last = quantize
        out_scale, out_zp = quantize.input(1), quantize.input(2)
        attrs = {"out_dtype": int(quantize.attrs.get("output_dtype", 0) or 0),
                 "precision": int(quantize.attrs.get("precision", 0) or 0)}
    if not all(only_read_by(n.outputs[0], nodes, keep) for n in nodes if n is not last):
        return False
    # K as keys x dims: a view of the 8-bit K^T, placed where K^T's dequantization read it
    k = graph.make_node("Transpose", [kt_dq[1]], attrs={"perm": SWAP_LAST}, before=kt_dq[0]).outputs[0]
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    k.dtype, k.shape = kt_dq[1].dtype, tuple(kt_dq[1].shape[i] for i in SWAP_LAST)
    programs = {"q_program": q_dq[0].attrs["program"], "k_program": kt_dq[0].attrs["program"],
                "v_program": v_dq[0].attrs["program"], "score_program": score_program, "prob_program": prob_program}
    attrs.update({name: p for name, p in programs.items() if p is not None})
    replace_nodes(graph, sorted(nodes, key=lambda n: order[id(n)]), "QDQAttention",
                  [q_dq[1], k, v_dq[1], mask, out_scale, out_zp], attrs, "kiln")
    return True

"""Which layers the accuracy budget's search ranks (compiler/accuracy_budget.py, step 3): the ones the
reduced engine reduces, weighted layers first.

fp16/bf16: every layer with float32 math that no rule or safety-table entry already keeps wider
(policy.layer_decisions), subgraph holders aside. int8/fp8: the layers the reduced engine quantized
(its header's build.int8/fp8.quantized, matched by their source names; only matmuls and
convolutions), and with quantize_attention each attention, whose 8-bit Q, K and V a rule keeping
it wider leaves float. At most `limit`, taken weighted layers first (they hold most of the reduced
math), then other compute, then data movement, each in graph order.
"""
from __future__ import annotations

from typing import Any

import onnx

from kiln.config import CALIBRATED_PRECISIONS, BuildConfig
from kiln.ir.graph import Graph, Node

# The ops a quantized layer was before the rewrite (a merged Q/K/V Split shares its fused_from).
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "FusedMatMul", "FusedConv")
# ops that only move or reshape data: ranked last (they add no rounding of their own beyond
# the cast of their input)
_DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice",
                            "Gather", "GatherElements", "Expand", "Identity", "Cast", "Pad", "Tile", "Shape", "Size"})


def candidates(model: str | onnx.ModelProto, config: BuildConfig, reduced: Any, limit: int) -> list[Node]:
    """The layers `config` reduces, weighted ones first, at most `limit`, in graph order."""
    from kiln.compiler.builder import optimized_graph
    from kiln.precision.policy import layer_decisions

    graph = optimized_graph(model, config, lambda _msg: None).graph
    if config.precision in CALIBRATED_PRECISIONS:
        quantized = {tuple(q["fused_from"]) for q in reduced.header["build"][config.precision]["quantized"]}
        nodes = [n for n in graph.nodes if (n.fused_from or (n.name,)) in quantized and n.op in QUANTIZABLE_OPS
                 or config.quantize_attention and n.qualified_op == "kiln::Attention"]
    else:
        wider = {id(n) for n, _ in layer_decisions(graph, config)}
        nodes = [n for n in graph.nodes if id(n) not in wider and _float32_math(n) and not _holds_subgraph(n)]
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    chosen = sorted(nodes, key=lambda n: (_priority(n), order[id(n)]))[:limit]
    return sorted(chosen, key=lambda n: order[id(n)])


def _priority(n: Node) -> int:
    if any(v is not None and v.is_const and v.dtype is not None and v.dtype.is_float and v.shape
           for v in n.inputs):
        return 0
    return 2 if not n.domain and n.op in _DATA_MOVEMENT else 1


def _float32_math(n: Node) -> bool:
    return any(v is not None and v.dtype is not None and v.dtype.name == "float32" for v in (*n.inputs, *n.outputs))


def _holds_subgraph(n: Node) -> bool:
    return any(isinstance(a, Graph) or isinstance(a, list) and any(isinstance(g, Graph) for g in a)
               for a in n.attrs.values())

"""Quantized islands: float math that lies wholly between dequantization and quantization.

In an explicitly quantized model (ONNX Runtime's QDQ models quantize every op), some float
computations read only 8-bit codes (through DequantizeLinear, or integers through a Cast) and
end only in codes (QuantizeLinear): an element-wise chain between Q/DQ pairs (a Gelu whose every
op is quantized, a residual add rounded to its own codes), a LayerNorm between a DQ and a Q.
Their float values never reach memory once the chain is fused (the kernels read and write
codes), so a 16-bit engine precision saves no bandwidth there; it would only round after every
op, which neither the model (its types say float32) nor ONNX Runtime does, and make each kernel
emulate those roundings. TensorRT's Q/DQ kernels likewise do their scale arithmetic in float32.
These layers keep float32.

An island is a set of layers joined by non-constant float32 tensors (a connected component),
none of which is a graph input or output or captured by a subgraph, every layer of an op the
folds after the precision policy take into kernels that read and write codes (ISLAND_OPS:
kiln::NormQuantize takes a LayerNorm and the residual add before it, kiln::Pointwise the
element-wise chains). A component with any other layer is left to the engine precision: a
calibrated QConv's float output into a pooling reaches memory, where 16 bits halve the traffic,
and an attention's float MatMuls (kiln::QDQAttention) multiply in one 16-bit MMA per tile there,
in float32 in three TF32 ones (tf32x3; IEEE float32 operands took the CUDA cores: 4.6x the
instructions on sm_90), which is not measured to pay off. A kiln::Pointwise from codes to codes
(its float math inside its program, its float32 only inlined scalars) is an island by itself.
Layers whose float32 tensors are constants only (a QMatMul's scales) are not: their arithmetic
is their kernel's, whatever the constants' type.
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.passes.match import pinned

F32 = dtypes.FLOAT32
ISLAND_OPS = frozenset({"kiln::Pointwise", "DequantizeLinear", "QuantizeLinear", "Gather", "LayerNormalization"})


def quantized_islands(graph: Graph) -> set[int]:
    """ids of the nodes in quantized islands (module docstring)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keep, inputs = pinned(graph), {id(v) for v in graph.inputs}
    open_nodes: list[int] = []
    for v in graph.values():
        if not _float_edge(v):
            continue
        ends = [n for n in (v.producer(), *v.consumers()) if n is not None]
        for n in ends:
            parent.setdefault(id(n), id(n))
            if n.qualified_op not in ISLAND_OPS:
                open_nodes.append(id(n))
        for n in ends[1:]:
            parent[find(id(n))] = find(id(ends[0]))
        if ends and (id(v) in keep or id(v) in inputs or v.producer() is None):
            open_nodes.append(id(ends[0]))
    opened = {find(i) for i in open_nodes}
    islands = {i for i in parent if find(i) not in opened}
    islands |= {id(n) for n in graph.nodes if id(n) not in parent and _codes_to_codes(n)}
    return islands


def _float_edge(v: Value) -> bool:
    return v.dtype == F32 and not v.is_const and v.kind == "tensor"


def _codes_to_codes(n: Node) -> bool:
    """A kiln::Pointwise with float32 scalars in its program and no float32 tensor but constants."""
    if n.qualified_op != "kiln::Pointwise":
        return False
    floats = any(isinstance(arg, dict) and arg.get("dtype") == "float32"
                 for instr in n.attrs.get("program", []) for arg in instr[1])
    return floats and not any(v is not None and _float_edge(v) for v in (*n.inputs, *n.outputs))

"""Quantize a float matmul's output in its epilogue: FusedMatMul + QuantizeLinear -> kiln::MatMulQuantize.

  QuantizeLinear(kiln::FusedMatMul(A, B, bias, residual) -> Y, s, zp) -> Yq
      -> kiln::MatMulQuantize(A, B, bias, residual, s, zp) -> Yq

Why: in a mixed-precision int8/fp8 engine a matmul kept in a float type (an --accuracy-budget
plan, a --layer-precision rule, a layer calibration could not cover) often feeds a quantized
one: MiniLM's budget plan keeps five FFN expansions in fp16 while the FFN contractions after
them stay fp8. Unfused, each kept matmul writes its [tokens, 4 * hidden] output in 16 bits and
a QuantizeLinear reads it back to write 8 (at batch 256 on an H200: an 87 us GEMM, then a 44 us
quantize pass); fused, the GEMM's epilogue writes the 8-bit codes (kernels/triton/gemm.py's
quantizing store), and where that kernel loses to cuBLAS the op runs as cuBLAS then the
quantize kernel, which is what it replaced (tactics/matmul_quantize.py: the tuner times both).

When: Y is read by that QuantizeLinear alone and is neither a graph output nor captured by a
subgraph; Y's type is float; the QuantizeLinear is per tensor with constant parameters, or per
channel of Y's last axis (SmoothQuant's activation scales: fold_requantize.per_last_channel),
to a type the fused epilogues write (8-bit integers, saturating float8).

Exactness: the op is defined as the two it replaces (kernels/reference/matmul_quantize.py), so
the pass runs after the precision policy (compiler/builder.py), when Y's float type and the
QuantizeLinear's are final, and changes no reference value. A GPU kernel sums in its own order
and the Triton store multiplies the float32 value by 1 / s where QuantizeLinear divides Y rounded
to 16 bits, so Yq may differ by a step where Y / s meets a rounding boundary (the tuner's rule
for this op, compiler/tolerance.py: one step, or the float16 tolerance, per element). The matmul
keeps its name (layer precision rules, inspect) and its place.
"""
from __future__ import annotations

from kiln.ir.dtypes import FLOAT_NAMES
from kiln.ir.graph import Graph, Node
from kiln.passes.match import live_ops, pinned, sole_user, trimmed
from kiln.precision.fold_requantize import per_last_channel, per_tensor



def fuse_matmul_quantize(graph: Graph) -> bool:
    """Fuse the QuantizeLinear that alone reads a float matmul's output into it (module docstring)."""
    keep = pinned(graph)
    changed = False
    for node in live_ops(graph, "kiln::FusedMatMul"):
        changed |= _fuse(graph, node, keep)
    return changed


def _fuse(graph: Graph, mm: Node, keep: set[int]) -> bool:
    y = mm.outputs[0]
    if len(mm.outputs) != 1 or y.dtype is None or y.dtype.name not in FLOAT_NAMES:
        return False
    q = sole_user(y, keep)
    if q is None or q.qualified_op != "QuantizeLinear" or q.input(0) is not y:
        return False
    if not (per_tensor(q) or (y.shape is not None and per_last_channel(q, tuple(y.shape)))):
        return False
    yq = q.outputs[0]
    inputs = [*(mm.input(i) for i in range(4)), q.input(1), q.input(2)]
    attrs = {**mm.attrs, "output_dtype": yq.dtype.onnx, "precision": int(q.attrs.get("precision", 0) or 0)}
    at = graph.nodes.index(mm)
    name, fused_from = mm.name, (mm.fused_from or (mm.name,)) + (q.fused_from or (q.name,))
    graph.remove_nodes([mm, q])
    anchor = graph.nodes[at] if at < len(graph.nodes) else None
    node = Node("MatMulQuantize", trimmed(inputs), [yq], attrs, name=name, domain="kiln")
    node.fused_from = fused_from
    graph.add_node(node, before=anchor)
    return True

"""An element-wise program of a quantized GEMM's codes into that GEMM, as a table of 256 codes.

  kiln::QMatMul(...) -> c (int8/uint8);  kiln::Pointwise(c; program) -> y (int8/uint8)
      -> kiln::QMatMul(..., table=T) -> y,   T[i] = program(the code whose bits are i)

Why: ONNX Runtime's QDQ transformers quantize every op of the FFN's activation (the Gelu's Div,
Erf, Add and Muls each between Q/DQ pairs): a function of one 8-bit code, which kiln runs as a
lookup kernel over the GEMM's output (kernels/triton/pointwise_table.py; BERT-base b32 on an
H200: 6.3 us a layer, the bytes of 4096 x 3072 codes read and written again). Folded, the GEMM's
epilogue looks each code up before storing it: one load from a 256-byte table per element.

When: the Pointwise reads the QMatMul's requantized codes alone (no other tensor operand, not a
graph output, nothing else reads them) and writes one int8/uint8 tensor of their shape; the
QMatMul has no table yet. The table is the reference program's output on the 256 codes,
computed here on the CPU and stored in the engine; the fused layer's reference looks it up
(reference/quantized.looked_up), so kernel and reference agree bit for bit. Against the
unfolded graph a code can differ only where the CPU's float math (erf, exp) and the GPU's
round one of the 256 values to different sides of a quantization boundary. Runs once the types
are final (after the precision policy), with the other quantized folds.
"""
from __future__ import annotations

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.quantized import QMATMUL_INPUTS, code_table
from kiln.passes.match import live_ops, only_read_by, pinned, place_inputs

TABLE = QMATMUL_INPUTS.index("table")
OUT_SCALE = QMATMUL_INPUTS.index("out_scale")


def fuse_code_table(graph: Graph) -> int:
    """Fold each such Pointwise into the QMatMul before it (module docstring); the number folded."""
    keep = pinned(graph)
    return sum(_fold(graph, node, keep) for node in live_ops(graph, "kiln::Pointwise"))


def _fold(graph: Graph, node: Node, keep: set[int]) -> bool:
    program = node.attrs.get("program")
    if program is None or len(node.inputs) != 1 or len(node.outputs) != 1 or node.attrs.get("outputs") \
            or int(node.attrs.get("n_outputs", 1)) != 1:
        return False
    c, y = node.input(0), node.outputs[0]
    gemm = c.producer() if c is not None else None
    if gemm is None or gemm.qualified_op != "kiln::QMatMul" or gemm.input(OUT_SCALE) is None \
            or gemm.input(TABLE) is not None or id(c) in keep or not only_read_by(c, [node], keep):
        return False
    if c.dtype is None or c.dtype.name not in dtypes.CODE_NAMES or y.dtype is None \
            or y.dtype.name not in dtypes.CODE_NAMES \
            or c.shape is None or tuple(y.shape or ()) != tuple(c.shape):
        return False
    table = code_table(program, c.dtype.torch)   # on the CPU, stored in the engine
    if table.dtype != y.dtype.torch:
        return False
    graph.remove_node(node)
    place_inputs(gemm, {TABLE: graph.constant(table, f"{gemm.name}_table")})
    gemm.outputs[0] = y
    y._producer = gemm
    c._producer = None
    gemm.fused_from = (*(gemm.fused_from or (gemm.name,)), *(node.fused_from or (node.name,)))
    return True

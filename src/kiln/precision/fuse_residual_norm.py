"""ONNX Runtime's quantized residual add into the norm that reads it:
kiln::Pointwise(DQ + DQ -> Q -> DQ) -> kiln::NormQuantize  =>  one kiln::NormQuantize.

  kiln::Pointwise(a, b; program) -> x;  kiln::NormQuantize(x, -, Scale, B, s, zp) -> (Yq, [Y])
      -> kiln::NormQuantize(a, b, Scale, B, s, zp; x_program=program) -> (Yq, [Y])

Why: a transformer quantized by ONNX Runtime's quantize_static (QDQ, every op) adds its residual
between Q/DQ pairs: DQ(the output projection's codes) + DQ(the residual stream's codes), quantized
and dequantized again, then the LayerNorm. kiln makes the add one element-wise kernel that writes
the float row for the norm to read back (BERT-base b32 on an H200: 4.7-5.3 us each, two a layer);
folded, the norm kernel reads the two 8-bit rows and computes the add itself.

When: the program is that form exactly (kernels/reference/quantized_sum.py), its output the
chain's float type and read by nothing but the norm's X (not a graph output), and the norm has
no residual of its own. Exactness: NormQuantize's reference runs the program first
(kernels/reference/norm_quantize.py), so the fold changes no reference value; the kernel computes
the add op by op as the Pointwise kernel rounds it. Runs after fuse_norm_quantize
(compiler/builder.py).
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.quantized_sum import quantized_sum
from kiln.passes.match import live_ops, pinned


def fuse_residual_norm(graph: Graph) -> bool:
    """Fold each such residual Pointwise into the NormQuantize after it (module docstring); True if any."""
    keep = pinned(graph)
    changed = False
    for norm in live_ops(graph, "kiln::NormQuantize"):
        changed |= _fuse(graph, norm, keep)
    return changed


def _fuse(graph: Graph, norm: Node, keep: set[int]) -> bool:
    x = norm.input(0)
    add = x.producer() if x is not None else None
    if add is None or add.qualified_op != "kiln::Pointwise" or norm.input(1) is not None or \
            norm.attrs.get("x_program") or len(add.outputs) != 1 or id(x) in keep or \
            any(user is not norm or i != 0 for user, i in x.uses()):
        return False
    form = quantized_sum(add.attrs.get("program"))
    a, b = add.input(0), add.input(1)
    if form is None or a is None or b is None or x.dtype is None or x.dtype.name != form.float_type or \
            a.dtype is None or b.dtype is None or (a.dtype.name, b.dtype.name) != form.code_types[:2] or \
            a.dtype != b.dtype or a.shape != x.shape or b.shape != x.shape:
        return False
    norm.set_input(0, a)
    norm.set_input(1, b)
    norm.attrs["x_program"] = add.attrs["program"]
    norm.fused_from = (add.fused_from or (add.name,)) + (norm.fused_from or (norm.name,))
    graph.remove_node(add)
    return True

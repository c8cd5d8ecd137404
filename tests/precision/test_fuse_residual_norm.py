"""precision/fuse_residual_norm.py: ONNX Runtime's quantized residual add (a kiln::Pointwise of
DQ + DQ -> Q -> DQ) folds into the kiln::NormQuantize that reads it, which then takes the two
8-bit rows and the program (x_program); anything else stays as it was. On a whole model (ONNX
Runtime's QDQ BERT, with its values against ONNX Runtime's): tests/passes/test_ort_qdq_transformer.py."""
from __future__ import annotations

import torch

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.registry import lookup
from kiln.precision.fuse_residual_norm import fuse_residual_norm

SHAPE = (2, 8, 16)
C = lambda v, dtype: {"const": v, "dtype": dtype}  # noqa: E731
ADD = [["DequantizeLinear", ["i0", C(0.0275, "float16"), C(-1, "int8")], {}],
       ["DequantizeLinear", ["i1", C(0.0004, "float16"), C(9, "int8")], {}],
       ["Add", ["t1", "t0"], {}],
       ["QuantizeLinear", ["t2", C(0.0276, "float16"), C(2, "int8")], {"output_dtype": 3}],
       ["DequantizeLinear", ["t3", C(0.0276, "float16"), C(2, "int8")], {}]]


def _graph(program=ADD, read_elsewhere: bool = False, residual: bool = False) -> tuple[Graph, Node, Node]:
    """a, b (int8) -> Pointwise(program) -> x (fp16) -> NormQuantize(x, [r], g, b, s, zp) -> yq."""
    g = Graph()
    i8, f16 = dtypes.from_name("int8"), dtypes.from_name("float16")
    a, b = g.value("a", i8, SHAPE), g.value("b", i8, SHAPE)
    g.inputs += [a, b]
    x = g.value("x", f16, SHAPE)
    add = g.add_node(Node("Pointwise", [a, b], [x], {"program": program, "n_outputs": 1}, name="add",
                          domain="kiln"))
    consts = [g.constant(torch.ones(16, dtype=torch.float16), "gamma"),
              g.constant(torch.zeros(16, dtype=torch.float16), "beta"),
              g.constant(torch.tensor(0.02, dtype=torch.float16), "ys"),
              g.constant(torch.tensor(0, dtype=torch.int8), "yzp")]
    r = None
    if residual:
        r = g.value("r", f16, SHAPE)
        g.inputs.append(r)
    yq = g.value("yq", i8, SHAPE)
    norm = g.add_node(Node("NormQuantize", [x, r, *consts], [yq], {"axis": -1, "epsilon": 1e-12, "output_dtype": 3},
                           name="ln", domain="kiln"))
    g.outputs.append(yq)
    if read_elsewhere:
        g.outputs.append(x)
    return g, add, norm


def test_the_add_folds_into_the_norm():
    g, add, norm = _graph()
    assert fuse_residual_norm(g)
    assert [n.qualified_op for n in g.nodes] == ["kiln::NormQuantize"]
    assert [v.name for v in norm.inputs[:2]] == ["a", "b"] and norm.attrs["x_program"] == ADD
    assert norm.fused_from == ("add", "ln")
    assert not fuse_residual_norm(g)                                  # once


def test_the_fold_computes_what_the_two_did():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-128, 128, SHAPE, generator=gen).to(torch.int8) for _ in range(2))
    params = (torch.ones(16, dtype=torch.float16), torch.zeros(16, dtype=torch.float16),
              torch.tensor(0.02, dtype=torch.float16), torch.tensor(0, dtype=torch.int8))
    norm = lookup("kiln::NormQuantize").fn
    x = lookup("kiln::Pointwise").fn(a, b, program=ADD)
    apart = norm(x, None, *params, epsilon=1e-12, output_dtype=3)
    folded = norm(a, b, *params, epsilon=1e-12, output_dtype=3, x_program=ADD)
    assert x.dtype == torch.float16 and torch.equal(apart[0], folded[0]) and len(torch.unique(folded[0])) > 50


def test_what_stays_apart():
    assert not fuse_residual_norm(_graph(read_elsewhere=True)[0])        # the sum is also a graph output
    assert not fuse_residual_norm(_graph(residual=True)[0])              # the norm adds a residual itself
    relu = ADD[:3] + [["Relu", ["t2"], {}], ["QuantizeLinear", ["t3", C(0.0276, "float16"), C(2, "int8")],
                                            {"output_dtype": 3}]]
    assert not fuse_residual_norm(_graph(program=relu)[0])               # another program
    f32 = [[op, [C(a["const"], "float32") if isinstance(a, dict) and a["dtype"] == "float16" else a
                 for a in args], attrs] for op, args, attrs in ADD]
    assert not fuse_residual_norm(_graph(program=f32)[0])                # a float32 chain into an fp16 norm

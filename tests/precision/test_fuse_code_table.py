"""precision/fuse_code_table.py: an element-wise program of a quantized GEMM's codes alone (ONNX
Runtime's QDQ Gelu after the FFN expansion) becomes a table of 256 codes in the kiln::QMatMul,
with the values the two layers computed; anything else stays as it was. On a whole model (ONNX
Runtime's QDQ BERT, against ONNX Runtime's values): tests/passes/test_ort_qdq_transformer.py."""
from __future__ import annotations

import math

import pytest
import torch

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node
from kiln.kernels.reference.interpret import run_graph
from kiln.kernels.reference.quantized import QMATMUL_INPUTS, code_table
from kiln.precision.fuse_code_table import fuse_code_table

C = lambda v, dtype="float32": {"const": v, "dtype": dtype}  # noqa: E731
# ONNX Runtime's quantized Gelu: x * 0.5 * (1 + erf(x / sqrt 2)), a Q/DQ pair after every op
GELU = [["DequantizeLinear", ["i0", C(0.05), C(-4, "int8")], {}],
        ["Div", ["t0", C(math.sqrt(2))], {}],
        ["Erf", ["t1"], {}],
        ["QuantizeLinear", ["t2", C(1 / 127), C(0, "int8")], {"output_dtype": 3}],
        ["DequantizeLinear", ["t3", C(1 / 127), C(0, "int8")], {}],
        ["Add", ["t4", C(1.0)], {}],
        ["Mul", ["t0", "t5"], {}],
        ["Mul", ["t6", C(0.5)], {}],
        ["QuantizeLinear", ["t7", C(0.03), C(-100, "int8")], {"output_dtype": 3}]]
I8 = dtypes.from_name("int8")


def _graph(program=GELU, out_type: str = "int8", codes_read_elsewhere: bool = False,
           second_input: bool = False) -> tuple[Graph, Node, Node]:
    """a (int8 [6, 32]) -> QMatMul(a, W; requantized to int8) -> c -> Pointwise(program) -> y."""
    g = Graph()
    a = g.value("a", I8, (6, 32))
    g.inputs.append(a)
    gen = torch.Generator().manual_seed(5)
    w = g.constant(torch.randint(-128, 128, (32, 24), generator=gen).to(torch.int8), "w")
    f = lambda v, name: g.constant(torch.tensor(v, dtype=torch.float32), name)  # noqa: E731
    inputs = [a, w, f(1 / 64, "a_s"), None, f(1 / 2048, "w_s"), None, None, None, f(0.05, "c_s"),
              g.constant(torch.tensor(-4, dtype=torch.int8), "c_zp")]
    c = g.value("c", I8, (6, 24))
    gemm = g.add_node(Node("QMatMul", inputs, [c], {"out_dtype": 3}, name="fc1", domain="kiln"))
    operands = [c]
    if second_input:
        other = g.value("other", I8, (6, 24))
        g.inputs.append(other)
        operands.append(other)
    y = g.value("y", dtypes.from_name(out_type), (6, 24))
    pointwise = g.add_node(Node("Pointwise", operands, [y], {"program": program, "n_outputs": 1}, name="gelu",
                                domain="kiln"))
    g.outputs.append(y)
    if codes_read_elsewhere:
        g.outputs.append(c)
    return g, gemm, pointwise


def test_the_program_becomes_the_gemms_table_with_the_same_values():
    feeds = {"a": torch.randint(-128, 128, (6, 32), generator=torch.Generator().manual_seed(1)).to(torch.int8)}
    g, gemm, _ = _graph()
    want = run_graph(g, feeds)["y"]
    assert fuse_code_table(g) == 1
    assert [n.qualified_op for n in g.nodes] == ["kiln::QMatMul"] and gemm.outputs[0].name == "y"
    table = gemm.input(QMATMUL_INPUTS.index("table"))
    assert table is not None and tuple(table.const.shape) == (256,) and gemm.fused_from == ("fc1", "gelu")
    got = run_graph(g, feeds)["y"]
    assert torch.equal(got, want) and len(torch.unique(want)) > 10
    assert fuse_code_table(g) == 0                                   # once


def test_the_table_is_the_program_on_every_code():
    table = code_table(GELU, torch.int8)
    assert table.dtype == torch.int8 and table.shape == (256,)
    # entry i holds the code whose bits are i: 0..127 then -128..-1
    x = (torch.arange(256).to(torch.uint8).view(torch.int8).float() + 4) * 0.05
    gelu = x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert (table.float() - torch.clamp(torch.round(gelu / 0.03) - 100, -128, 127)).abs().max() <= 3


@pytest.mark.parametrize("case", ["codes_read_elsewhere", "second_input", "float_output"])
def test_anything_else_stays(case):
    if case == "float_output":
        g, _, _ = _graph(program=GELU[:-1], out_type="float32")
    else:
        g, _, _ = _graph(**{case: True})
    before = [n.qualified_op for n in g.nodes]
    assert fuse_code_table(g) == 0 and [n.qualified_op for n in g.nodes] == before

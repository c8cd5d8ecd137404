"""gather_before_dequantize: a Gather from a per-tensor dequantized table reads the codes and
dequantizes the gathered rows, with the same values; per-axis tables are left alone; a table
too large to fold builds into an engine that dequantizes only the rows (no DequantizeLinear of
the whole table) and matches onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.verify import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.passes.gather_before_dequantize import gather_before_dequantize

RNG = np.random.default_rng(3)
TABLE = RNG.integers(-128, 128, (50, 8), dtype=np.int8)


def _graph(scale: np.ndarray, zp: np.ndarray, *, dq_read_elsewhere: bool = False) -> Graph:
    g = Graph("g", 17)
    ids = Value("ids", dtypes.INT64, (2, 3))
    g.inputs.append(ids)
    table = g.value("table")
    attrs = {} if scale.size == 1 else {"axis": 1}
    g.add_node(Node("DequantizeLinear", [g.constant(TABLE, "codes"), g.constant(scale, "s"), g.constant(zp, "zp")],
                    [table], attrs, name="dq"))
    rows = g.value("rows")
    g.add_node(Node("Gather", [table, ids], [rows], {"axis": 0}, name="gather"))
    y = g.value("y")
    g.add_node(Node("Relu", [rows], [y], name="relu"))
    g.outputs.append(y)
    if dq_read_elsewhere:
        g.outputs.append(table)
    return g


def _run(g: Graph, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return run_graph(g, {"ids": ids})


@pytest.mark.parametrize("read_elsewhere", [False, True])
def test_gathers_codes_then_dequantizes_the_rows(read_elsewhere: bool) -> None:
    ids = torch.tensor([[0, 7, 49], [3, 3, 12]])
    scale, zp = np.array(0.037, np.float32), np.array(-5, np.int8)
    want = _run(_graph(scale, zp, dq_read_elsewhere=read_elsewhere), ids)
    g = _graph(scale, zp, dq_read_elsewhere=read_elsewhere)
    assert gather_before_dequantize(g)
    verify(g)
    gather = next(n for n in g.nodes if n.op == "Gather")
    assert gather.input(0).name == "codes" and gather.outputs[0].dtype.name == "int8"
    dqs = [n for n in g.nodes if n.op == "DequantizeLinear"]
    assert any(n.input(0) is gather.outputs[0] for n in dqs)
    assert len(dqs) == 2   # the table's own stays for its other reader, or until dead code elimination
    got = _run(g, ids)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0)
    assert not gather_before_dequantize(g)            # nothing left to rewrite


def test_per_axis_table_is_left_alone() -> None:
    g = _graph(np.full(8, 0.02, np.float32), np.zeros(8, np.int8))
    assert not gather_before_dequantize(g)
    assert [n.op for n in g.nodes] == ["DequantizeLinear", "Gather", "Relu"]


def test_large_table_builds_without_dequantizing_it_whole(tmp_path, monkeypatch) -> None:
    ort = pytest.importorskip("onnxruntime")
    import kiln
    from kiln.config import BuildConfig
    from kiln.passes import fold_constants
    monkeypatch.setattr(fold_constants, "MAX_FOLDED_BYTES", 0)   # the table counts as too large to fold
    table = RNG.integers(-128, 128, (300, 16), dtype=np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["codes", "s", "zp"], ["table"]),
             helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Mul", ["rows", "two"], ["y"])]
    inits = [numpy_helper.from_array(table, "codes"), numpy_helper.from_array(np.array(0.011, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.int8), "zp"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "emb.onnx"
    onnx.save(model, str(path))
    engine = kiln.build(str(path), BuildConfig(device="cpu"))
    gathers = [s for s in engine.plan.steps if s.op == "Gather"]
    assert len(gathers) == 1 and engine.plan.slots[gathers[0].inputs[0]].dtype == "int8"
    ids = RNG.integers(0, 300, (4, 5)).astype(np.int64)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(np.asarray(engine(ids=ids)["y"]), want)

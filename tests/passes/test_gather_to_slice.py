"""gather_to_slice: a scalar-index Gather on a rank >= 2 tensor becomes Slice + Squeeze with the
same values; other Gathers are left alone."""
from __future__ import annotations

import numpy as np
import torch

from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.verify import verify
from kiln.kernels.reference.interpret import run_graph
from kiln.passes.gather_to_slice import gather_to_slice


def _graph(index, data_shape=(3, 2, 4, 5), axis=0) -> Graph:
    g = Graph("g", 17)
    x = Value("x", dtypes.FLOAT32, data_shape)
    g.inputs.append(x)
    idx = g.constant(np.array(index, np.int64), "idx")
    y = g.value("y")
    g.add_node(Node("Gather", [x, idx], [y], {"axis": axis}, name="gather"))
    z = g.value("z")
    g.add_node(Node("Relu", [y], [z], name="relu"))
    g.outputs.append(z)
    return g


def _check(index, axis, data_shape=(3, 2, 4, 5)) -> Graph:
    x = torch.randn(data_shape)
    want = run_graph(_graph(index, data_shape, axis), {"x": x})["z"]
    g = _graph(index, data_shape, axis)
    assert gather_to_slice(g)
    verify(g)
    torch.testing.assert_close(run_graph(g, {"x": x})["z"], want, rtol=0, atol=0)
    return g


def test_scalar_index_becomes_views() -> None:
    g = _check(1, 0)
    assert [n.op for n in g.nodes] == ["Slice", "Squeeze", "Relu"]
    _check(-1, 2)
    _check(3, -1)


def test_other_gathers_are_kept() -> None:
    for g in (_graph([0, 2]), _graph(1, data_shape=(6,))):
        assert not gather_to_slice(g)
        assert [n.op for n in g.nodes] == ["Gather", "Relu"]

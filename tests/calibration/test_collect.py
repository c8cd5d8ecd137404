"""collect_ranges over a tiny imported graph: one amax per float activation, MinMax by hand."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.calibration.collect import collect_ranges
from kiln.calibration.data import iterable_batches
from kiln.errors import InputError, KilnError
from kiln.onnx.importer import import_model

W = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [-1.0, 1.0, 3.0]], dtype=np.float32)  # [4, 3]
B = np.array([0.1, -0.2, 0.3], dtype=np.float32)


def tiny_model() -> onnx.ModelProto:
    """y = Relu(x @ W + b), s = Shape(x): three float activations past the input, one int64 output."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["pre"], name="add"),
             helper.make_node("Relu", ["pre"], ["y"], name="relu"),
             helper.make_node("Shape", ["x"], ["s"], name="shape")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def tiny_graph():
    return import_model(tiny_model())


def _batches(n=5, rows=8):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((rows, 4)).astype(np.float32)} for _ in range(n)]


def test_minmax_ranges_match_by_hand(tiny_graph):
    batches = _batches()
    seen = []
    ranges = collect_ranges(tiny_graph, iterable_batches(batches, tiny_graph.inputs), method="minmax",
                            progress=seen.append)
    assert seen == [1, 2, 3, 4, 5]
    x = np.concatenate([b["x"] for b in batches])
    mm = x @ W
    pre = mm + B
    want = {"x": np.abs(x).max(), "mm": np.abs(mm).max(), "pre": np.abs(pre).max(), "y": np.maximum(pre, 0).max()}
    assert set(ranges) == set(want)  # the int64 Shape output is no activation
    for name, amax in want.items():
        assert ranges[name] == pytest.approx(float(amax), rel=1e-6), name


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_methods_stay_within_minmax(tiny_graph, method):
    minmax = collect_ranges(tiny_graph, _batches(), method="minmax")
    ranges = collect_ranges(tiny_graph, _batches(), method=method, percentile=99.0)
    assert set(ranges) == set(minmax)
    for name, amax in ranges.items():
        assert 0.0 < amax <= minmax[name], name


def test_errors(tiny_graph):
    with pytest.raises(KilnError, match="no batches"):
        collect_ranges(tiny_graph, [], method="minmax")
    with pytest.raises(KilnError, match="unknown calibration method"):
        collect_ranges(tiny_graph, _batches(), method="kl")
    with pytest.raises(InputError, match="lacks input"):
        collect_ranges(tiny_graph, iterable_batches([{"z": np.zeros((1, 4), np.float32)}], tiny_graph.inputs))

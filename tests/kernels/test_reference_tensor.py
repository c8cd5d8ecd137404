"""Reduction, shape/layout and indexing reference ops against onnx's ReferenceEvaluator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto
from onnx_oracle import Case, Rand, check_case, ints, run_kiln

R = Rand(seed=3)
X = R.f(2, 3, 4)
XI = R.i(2, 3, 4, lo=0, hi=4)  # small ints: many ties for Arg*/TopK
_REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"]

CASES = [Case(op, (X, ints(1))) for op in _REDUCE] + [
    Case(op, (X, ints(0, -1)), {"keepdims": 0}, name="two_axes_drop") for op in _REDUCE] + [
    Case("ReduceLogSum", (R.f(2, 3, 4, lo=0.1), ints(2))),
    Case("ReduceSum", (X,), name="all_axes"),
    Case("ReduceMean", (X,), {"keepdims": 0}, name="all_axes_scalar"),
    Case("ReduceSum", (X, np.zeros(0, np.int64)), {"noop_with_empty_axes": 1}, name="noop"),
    Case("ReduceSum", (XI, ints(1)), name="int32"),
    Case("ReduceMax", (XI, ints(-1)), {"keepdims": 0}, name="int32"),
    Case("ReduceProd", (R.i(3, 4, lo=-3, hi=4, dtype=np.int64), ints(0)), name="int64"),
    Case("ArgMax", (XI,), {"axis": 1}),
    Case("ArgMax", (XI,), {"axis": -1, "keepdims": 0, "select_last_index": 1}, name="last"),
    Case("ArgMin", (XI,), {"axis": 2}),
    Case("ArgMin", (XI,), {"axis": 0, "select_last_index": 1}, name="last"),
    Case("CumSum", (X, np.array(1, np.int64))),
    Case("CumSum", (XI, np.array(-1, np.int32)), {"exclusive": 1}, name="exclusive"),
    Case("CumSum", (X, np.array(2, np.int64)), {"reverse": 1, "exclusive": 1}, name="reverse_exclusive"),
    Case("TopK", (X, ints(2)), outputs=2),
    Case("TopK", (XI, ints(3)), {"axis": 1, "largest": 0}, outputs=2, name="smallest_ties"),
    Case("TopK", (XI, ints(2)), {"axis": -1}, outputs=2, name="largest_ties"),
    Case("Einsum", (R.f(2, 3, 4), R.f(2, 4, 5)), {"equation": "bij,bjk->bik"}, tol=(1e-5, 1e-5)),
    Case("Einsum", (X,), {"equation": "ijk->kji"}, name="transpose"),
    Case("Einsum", (R.f(3, 3),), {"equation": "ii->i"}, name="diagonal"),
    Case("Shape", (X,)),
    Case("Shape", (X,), {"start": 1}, name="start"),
    Case("Shape", (X,), {"start": -2, "end": -1}, name="negative"),
    Case("Size", (X,)),
    Case("Reshape", (X, ints(0, -1))),
    Case("Reshape", (X, ints(4, 0, 2)), name="zero_copies"),
    Case("Reshape", (np.zeros((0, 3), np.float32), ints(3, 0)), {"allowzero": 1}, name="allowzero"),
    Case("Transpose", (X,)),
    Case("Transpose", (X,), {"perm": [1, 2, 0]}, name="perm"),
    Case("Squeeze", (R.f(1, 3, 1, 2), ints(0, -2))),
    Case("Squeeze", (R.f(1, 3, 1, 2),), name="all"),
    Case("Unsqueeze", (X, ints(0, -1))),
    Case("Unsqueeze", (X, ints(3, 1)), name="unsorted"),
    Case("Concat", (X, R.f(2, 1, 4), R.f(2, 2, 4)), {"axis": 1}),
    Case("Concat", (XI, XI), {"axis": -1}, name="int_neg_axis"),
    Case("Split", (X, ints(1, 3)), {"axis": 2}, outputs=2),
    Case("Split", (R.f(7, 2),), {"num_outputs": 3}, outputs=3, name="uneven"),
    Case("Slice", (X, ints(0, 1), ints(2, 100), ints(0, 2))),
    Case("Slice", (X, ints(-1, 2), ints(-100, 0), ints(2, 1), ints(-2, -1)), name="negative_steps"),
    Case("Slice", (X, ints(1), ints(2**62)), name="huge_end"),
    Case("Slice", (X, ints(0), ints(4), ints(-1), ints(3)), name="step3"),
    Case("Gather", (X, ints(2, -1, 0)), {"axis": 1}),
    Case("Gather", (X, np.array(-1, np.int64)), name="scalar_index"),
    Case("Gather", (X, R.i(2, 2, lo=-4, hi=4)), {"axis": -1}, name="2d_indices"),
    Case("GatherElements", (X, R.i(2, 2, 4, lo=-3, hi=3, dtype=np.int64)), {"axis": 1}),
    Case("GatherND", (X, np.array([[0, 1], [1, -1]], np.int64))),
    Case("GatherND", (X, np.array([[1], [0]], np.int64)), {"batch_dims": 1}, name="batch_dims"),
    Case("ScatterElements", (X, ints(0, 2, 1).reshape(1, 3, 1), R.f(1, 3, 1)), {"axis": 1}),
    Case("ScatterElements", (X, np.array([[[0, 0, 1]]], np.int64), R.f(1, 1, 3)), {"axis": 2, "reduction": "add"},
         name="add_duplicates"),
    Case("ScatterElements", (X, np.array([[[0, 0, 1]]], np.int64), R.f(1, 1, 3)), {"axis": 2, "reduction": "mul"},
         name="mul"),
    Case("ScatterElements", (X, np.array([[[0, -1, 1]]], np.int64), R.f(1, 1, 3)), {"axis": 2, "reduction": "max"},
         name="max"),
    Case("ScatterND", (X, np.array([[1, 2], [0, -1]], np.int64), R.f(2, 4))),
    Case("ScatterND", (X, np.array([[1], [1]], np.int64), R.f(2, 3, 4)), {"reduction": "add"}, name="add"),
    Case("ScatterND", (X, np.array([[0, 1, 2], [0, 1, 2]], np.int64), R.f(2)), {"reduction": "min"}, name="min"),
    Case("Expand", (R.f(3, 1), ints(2, 1, 4))),
    Case("Expand", (R.f(2, 3), ints(3)), name="smaller_shape"),
    Case("Tile", (X, ints(1, 2, 3))),
    Case("Pad", (X, ints(0, 1, 2, 0, 2, 1), np.float32(1.5))),
    # onnx's reference Pad hands negative pads to np.pad, which rejects them.
    Case("Pad", (X, ints(0, -1, 1, 1, 0, -2)), oracle="ort", name="negative_crop"),
    Case("Pad", (X, ints(0, 2, 3, 0, 1, 2)), {"mode": "reflect"}, name="reflect"),
    Case("Pad", (X, ints(1, 2, 1, 2), None, ints(1, -1)), {"mode": "edge"}, name="edge_axes"),
    Case("Pad", (X, ints(0, 5, 3, 0, 2, 4)), {"mode": "wrap"}, name="wrap"),
    Case("Pad", (XI, ints(1, 0, 0, 1, 0, 2), np.int32(7)), name="int_constant"),
    Case("ConstantOfShape", (ints(2, 3),)),
    Case("ConstantOfShape", (ints(4,),), {"value": np.array([7], np.int64)}, name="int64_value"),
    Case("ConstantOfShape", (np.zeros(0, np.int64),), {"value": np.array([2.5], np.float16)}, name="scalar"),
    Case("Range", (np.int64(1), np.int64(10), np.int64(3))),
    Case("Range", (np.float32(1.0), np.float32(-2.0), np.float32(-0.7)), name="float_negative_delta"),
    Case("Range", (np.int32(5), np.int32(2), np.int32(1)), name="empty"),
    Case("OneHot", (np.array([[0, 2], [-1, 5]], np.int64), np.int64(4), np.array([0.0, 3.0], np.float32))),
    Case("OneHot", (np.array([1, 0], np.int32), np.float32(3), np.array([2, 9], np.int64)), {"axis": 0},
         name="axis0"),
    Case("NonZero", (XI,)),
    Case("Trilu", (R.f(2, 4, 5),)),
    Case("Trilu", (R.f(4, 5), np.int64(-1)), {"upper": 0}, name="lower_k"),
    Case("ReverseSequence", (R.f(4, 3, 2), np.array([4, 1, 2], np.int64))),
    Case("ReverseSequence", (R.f(3, 4, 2), np.array([1, 4, 3], np.int64)), {"batch_axis": 0, "time_axis": 1},
         name="batch_first"),
    Case("EyeLike", (R.f(3, 5),), {"k": 1}),
    Case("EyeLike", (R.i(4, 3),), {"k": -1, "dtype": TensorProto.FLOAT}, name="dtype"),
    Case("Compress", (X, np.array([True, False, True])), {"axis": 1}),
    Case("Compress", (X, np.array([False, True, True, False, True])), name="flat"),
    Case("Unique", (np.array([2, 1, 1, 3, 4, 3], np.int64),), outputs=4),
    Case("Unique", (np.array([2, 1, 1, 3, 4, 3], np.int64),), {"sorted": 0}, outputs=4, name="unsorted"),
    Case("Unique", (np.array([[1, 0], [2, 3], [1, 0]], np.float32),), {"axis": 0}, outputs=4, name="axis"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


def test_split_needs_sizes_or_output_count() -> None:
    with pytest.raises(ValueError, match="num_outputs"):
        run_kiln(Case("Split", (X,)))


def test_shape_inputs_are_read_but_data_stays_put() -> None:
    # Reshape's data passes through as a view: no copy, same storage.
    x = torch.arange(6.0)
    from kiln.kernels.reference import lookup

    y = lookup("Reshape").fn(x, torch.tensor([2, 3]))
    assert y.shape == (2, 3) and y.data_ptr() == x.data_ptr()

"""Indexing, shape and detection reference ops against onnx's ReferenceEvaluator, on the
cases the ONNX backend node tests exercise: NonMaxSuppression, TensorScatter, Scatter,
CenterCropPad, and Range in half types."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_oracle import Case, Rand, check_case, expected_outputs, ints, run_kiln

from kiln.kernels.reference.registry import lookup

R = Rand(seed=7)


def _f32(values) -> np.ndarray:
    return np.array(values, np.float32)


# Six boxes [y1, x1, y2, x2] in two clusters plus a far one; the suite's classic layout.
BOXES = _f32([[0.0, 0.0, 1.0, 1.0], [0.0, 0.1, 1.0, 1.1], [0.0, -0.1, 1.0, 0.9],
              [0.0, 10.0, 1.0, 11.0], [0.0, 10.1, 1.0, 11.1], [0.0, 100.0, 1.0, 101.0]])
SCORES = _f32([0.9, 0.75, 0.6, 0.95, 0.5, 0.3])
FLIPPED = BOXES[:, [2, 3, 0, 1]]  # same boxes, corners given in the other order
CENTER = _f32([[(b[1] + b[3]) / 2, (b[0] + b[2]) / 2, b[3] - b[1], b[2] - b[0]] for b in BOXES])
# Two boxes with IoU exactly 1/3 (unit squares overlapping by half): kept at threshold 1/3.
BOUNDARY = _f32([[0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 1.0, 1.5]])


def _nms(boxes, scores, limit, iou, score=None, name="", **attrs) -> Case:
    ins = (boxes[None], scores[None] if scores.ndim == 2 else scores[None, None], ints(limit), np.float32([iou]),
           None if score is None else np.float32([score]))
    return Case("NonMaxSuppression", ins, attrs, opset=11, name=name)


TWO_CLASSES = np.stack([SCORES, SCORES[::-1].copy()])  # [2 classes, 6 boxes]

CASES = [
    _nms(BOXES, SCORES, 3, 0.5, name="by_iou"),
    _nms(BOXES, SCORES, 3, 0.5, 0.4, name="by_iou_and_scores"),
    _nms(BOXES, SCORES, 2, 0.5, name="limit"),
    _nms(BOXES, SCORES, 0, 0.5, name="zero_limit"),
    _nms(FLIPPED, SCORES, 3, 0.5, name="flipped"),
    _nms(CENTER, SCORES, 3, 0.5, name="center_point", center_point_box=1),
    _nms(np.repeat(BOXES[:1], 6, 0), np.full((1, 6), 0.9, np.float32), 3, 0.5, name="identical"),
    _nms(BOXES, TWO_CLASSES, 2, 0.5, name="two_classes"),
    _nms(BOUNDARY, _f32([0.9, 0.8]), 2, 1 / 3, name="iou_boundary"),
    Case("NonMaxSuppression", (np.stack([BOXES, FLIPPED]), np.stack([SCORES, SCORES[::-1].copy()])[:, None], ints(2),
                               np.float32([0.5]), np.float32([0.0])), opset=11, name="two_batches"),
    Case("TensorScatter", (R.f(2, 3, 5, 4), R.f(2, 3, 2, 4), ints(1, 3)), opset=24),
    Case("TensorScatter", (R.f(2, 5, 4), R.f(2, 3, 4), ints(3, 0)), {"mode": "circular"}, opset=24,
         name="circular"),
    Case("TensorScatter", (R.f(2, 6, 4), R.f(2, 6, 2)), {"axis": 2}, opset=24, name="prefill_last_axis"),
    Case("CenterCropPad", (R.f(20, 10, 3), ints(10, 7, 3)), opset=18, name="crop"),
    Case("CenterCropPad", (R.f(10, 7, 3), ints(20, 10, 3)), opset=18, name="pad"),
    Case("CenterCropPad", (R.f(20, 8, 3), ints(10, 11)), {"axes": [-3, -2]}, opset=18, name="crop_pad_axes"),
    Case("CenterCropPad", (R.i(3, 9, 6), ints(5, 9)), {"axes": [1, 2]}, opset=18, name="int_odd"),
    Case("Range", (np.float16(1.0), np.float16(5.0), np.float16(0.75)), name="float16"),
    Case("Range", (np.int32(10), np.int32(6), np.int32(-3)), name="int32_negative_delta"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


# The onnx reference has no deprecated Scatter: it must equal ScatterElements (opset 10).
SCATTER = [
    ((np.zeros((3, 3), np.float32), np.array([[1, 0, 2], [0, 2, 1]], np.int64), R.f(2, 3)), {}),
    ((R.f(1, 5), np.array([[1, -2]], np.int64), R.f(1, 2)), {"axis": 1}),
]


@pytest.mark.parametrize("inputs,attrs", SCATTER, ids=["axis0", "axis1_negative_index"])
def test_scatter_is_scatter_elements(inputs, attrs) -> None:
    (expected,) = expected_outputs(Case("ScatterElements", inputs, attrs, opset=11))
    (got,) = run_kiln(Case("Scatter", inputs, attrs, opset=10))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_nms_output_is_int64_triples() -> None:
    (out,) = run_kiln(_nms(BOXES, TWO_CLASSES, 2, 0.5))
    assert out.dtype == torch.int64 and out.shape == (4, 3)
    assert out.tolist() == [[0, 0, 3], [0, 0, 0], [0, 1, 2], [0, 1, 5]]


def test_range_bfloat16_steps_in_bfloat16() -> None:
    start, limit, delta = (torch.tensor(v, dtype=torch.bfloat16) for v in (1.0, 5.0, 0.5))
    out = lookup("Range").fn(start, limit, delta)
    assert out.dtype == torch.bfloat16
    assert out.tolist() == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]

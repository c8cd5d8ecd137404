"""Resize and the sampling ops (GridSample, AffineGrid, DeformConv, Col2Im, RoiAlign,
MaxUnpool) against onnx's ReferenceEvaluator; and the import of old-opset forms
(opset 1-10: Upsample, Resize-10, broadcast/axis attributes ...) through the backend."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_oracle import Case, Rand, check_case, ints

from kiln.onnx.backend import KilnBackend

R = Rand(seed=7)
IMG = R.f(1, 2, 4, 5)


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


RESIZE = [
    Case("Resize", (IMG, None, floats(1, 1, 0.6, 0.5)), {"mode": "linear", "antialias": 1},
         opset=19, name="linear_antialias_down"),
    Case("Resize", (IMG, None, None, ints(1, 2, 3, 2)), {"mode": "cubic", "antialias": 1},
         opset=19, name="cubic_antialias_sizes"),
    Case("Resize", (IMG, None, floats(1, 1, 1.5, 0.7)),
         {"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, opset=19, name="cubic_exclude_outside"),
    Case("Resize", (IMG, None, floats(1, 1, 0.6, 0.6)),
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=19,
         name="align_corners_fractional_length"),
    Case("Resize", (IMG, floats(0, 0, 0.2, -0.3, 1, 1, 0.9, 1.2), None, ints(1, 2, 3, 4)),
         {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
          "extrapolation_value": 7.5}, opset=19, name="tf_crop_and_resize_extrapolate"),
    Case("Resize", (IMG, None, None, ints(7, 6)),
         {"axes": [3, 2], "keep_aspect_ratio_policy": "not_larger"}, opset=19, name="axes_not_larger"),
    Case("Resize", (IMG, None, None, ints(7, 6)),
         {"axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller", "nearest_mode": "round_prefer_ceil",
          "coordinate_transformation_mode": "asymmetric"}, opset=19, name="not_smaller_prefer_ceil"),
    Case("Resize", (R.i(1, 1, 3, 3, lo=0, hi=200, dtype=np.uint8), None, floats(1, 1, 1.7, 2.2)),
         {"mode": "linear"}, opset=19, name="uint8_rounds"),
]

GRID = R.f(2, 3, 4, 2, lo=-1.3, hi=1.3)
SAMPLING = [
    *[Case("GridSample", (IMG.repeat(2, axis=0), GRID),
           {"mode": m, "padding_mode": p, "align_corners": a}, opset=22, name=f"{m}_{p}_{a}",
           tol=(1e-4, 1e-5) if m == "cubic" else None)  # the reference sums cubic taps in float32
      for m, p, a in [("linear", "zeros", 0), ("linear", "border", 1), ("linear", "reflection", 0),
                      ("nearest", "zeros", 1), ("nearest", "reflection", 1), ("cubic", "zeros", 0),
                      ("cubic", "border", 1)]],
    Case("GridSample", (R.f(1, 2, 3, 2, 4), R.f(1, 2, 2, 3, 3, lo=-1.2, hi=1.2)), {"mode": "linear"},
         opset=22, name="volumetric"),
    Case("AffineGrid", (R.f(2, 2, 3), ints(2, 1, 3, 4)), opset=20, name="2d"),
    Case("AffineGrid", (R.f(1, 3, 4), ints(1, 1, 2, 3, 4)), {"align_corners": 1}, opset=20, name="3d_corners"),
    Case("DeformConv", (R.f(1, 4, 4, 5), R.f(4, 2, 2, 2), R.f(1, 2 * 4 * 2, 3, 4, lo=-1, hi=1), R.f(4),
                        R.f(1, 2 * 4, 3, 4, lo=0, hi=1)),
         {"group": 2, "offset_group": 2, "kernel_shape": [2, 2]}, opset=22, name="groups_mask_bias"),
    Case("DeformConv", (R.f(1, 1, 4, 4), R.f(1, 1, 3, 3), R.f(1, 18, 2, 2, lo=-2, hi=2)),
         {"pads": [1, 1, 1, 1], "strides": [2, 2], "dilations": [1, 1]}, opset=22, name="pads_strides"),
    Case("Col2Im", (R.f(1, 2 * 4, 6), ints(4, 5), ints(2, 2)),
         {"pads": [0, 1, 0, 1], "strides": [1, 2], "dilations": [2, 1]}, opset=18, name="2d"),
    Case("Col2Im", (R.f(1, 8, 8), ints(3, 3, 3), ints(2, 2, 2)), opset=18, name="3d"),
    Case("RoiAlign", (R.f(2, 2, 6, 5), floats(0.5, 0.2, 3.7, 4.9, 1, 1, 2.2, 1.8, -2, -1, 6, 8).reshape(3, 4),
                      ints(0, 1, 1)), {"output_height": 3, "output_width": 2}, opset=22, name="avg_adaptive"),
    Case("RoiAlign", (R.f(1, 2, 6, 5), floats(0.5, 0.2, 3.7, 4.9, 1, 1, 2.2, 1.8).reshape(2, 4), ints(0, 0)),
         {"output_height": 2, "output_width": 3, "mode": "max", "sampling_ratio": 2, "spatial_scale": 0.8,
          "coordinate_transformation_mode": "output_half_pixel"}, opset=22, name="max_output_half_pixel"),
    Case("MaxUnpool", (floats(5, 6, 7, 8).reshape(1, 1, 2, 2), ints(5, 7, 13, 15).reshape(1, 1, 2, 2),
                       ints(1, 1, 5, 5)),
         {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=22, name="output_shape"),
    Case("MaxUnpool", (floats(5, 6, 7, 8).reshape(1, 1, 2, 2), ints(0, 3, 9, 15).reshape(1, 1, 2, 2)),
         {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=22, name="inferred_shape"),
]


@pytest.mark.parametrize("case", RESIZE + SAMPLING, ids=lambda c: c.id)
def test_against_onnx_reference(case: Case) -> None:
    check_case(case)


# ------------------------------------------------------------------ old opsets


def _run(nodes, inputs, outputs, opset, feeds, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    return KilnBackend.run_model(model, feeds)


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_opset1_broadcast_axis_and_legacy_attrs() -> None:
    a, b = R.f(2, 3, 4), R.f(3)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], broadcast=1, axis=1),
             helper.make_node("Relu", ["s"], ["r"], consumed_inputs=[0]),
             helper.make_node("Cast", ["r"], ["y"], to="DOUBLE"),
             helper.make_node("Reshape", ["y"], ["z"], shape=[4, 6]),
             helper.make_node("Concat", ["z", "z"], ["out"])]
    (out,) = _run(nodes, [_vi("a", [2, 3, 4]), _vi("b", [3])], [_vi("out", [4, 12], TensorProto.DOUBLE)], 1,
                  [a, b])
    z = np.maximum(a + b[None, :, None], 0).astype(np.float64).reshape(4, 6)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.concatenate([z, z], axis=1), rtol=1e-6)


def test_upsample_and_resize10_become_resize() -> None:
    x = R.f(1, 1, 2, 3)
    up7 = helper.make_node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 3.0])
    (y7,) = _run([up7], [_vi("x", [1, 1, 2, 3])], [_vi("y", [1, 1, 4, 9])], 7, [x])
    np.testing.assert_array_equal(y7, x.repeat(2, axis=2).repeat(3, axis=3))
    s = floats(1, 1, 1.5, 2)
    for op, opset in (("Upsample", 9), ("Resize", 10)):
        node = helper.make_node(op, ["x", "s"], ["y"], mode="linear")
        (y,) = _run([node], [_vi("x", [1, 1, 2, 3]), _vi("s", [4])], [_vi("y", [1, 1, 3, 6])], opset, [x, s])
        # asymmetric coordinates: output i samples input i / scale, clamped at the edge.
        rows = np.clip(np.arange(3) / 1.5, 0, 1)
        cols = np.clip(np.arange(6) / 2.0, 0, 2)
        r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
        r1, c1 = np.minimum(r0 + 1, 1), np.minimum(c0 + 1, 2)
        fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
        img = x[0, 0]
        want = ((1 - fr) * ((1 - fc) * img[r0][:, c0] + fc * img[r0][:, c1])
                + fr * ((1 - fc) * img[r1][:, c0] + fc * img[r1][:, c1]))
        np.testing.assert_allclose(y[0, 0], want, rtol=1e-5, err_msg=f"{op}-{opset}")

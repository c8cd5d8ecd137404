"""Conv, pooling, normalisation, Gemm/MatMul and softmax reference ops against onnx's
ReferenceEvaluator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_oracle import Case, Rand, check_case, ints, run_kiln

R = Rand(seed=2)
IMG = R.f(2, 4, 7, 6)  # [N, C, H, W]
W3 = R.f(6, 4, 3, 3)
SUMS = (1e-5, 1e-5)  # conv/matmul sums of many terms: atol a little above float32 rounding

CASES = [
    Case("Conv", (IMG, W3, R.f(6)), tol=SUMS, name="bias"),
    Case("Conv", (IMG, W3), {"pads": [1, 0, 2, 1]}, tol=SUMS, name="asymmetric_pads"),
    Case("Conv", (IMG, W3), {"strides": [2, 2], "dilations": [2, 1], "pads": [1, 1, 1, 1]},
         tol=SUMS, name="strided_dilated"),
    Case("Conv", (IMG, R.f(6, 2, 3, 3)), {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
         tol=SUMS, name="group_same_upper"),
    Case("Conv", (IMG, R.f(4, 1, 2, 2)), {"group": 4, "auto_pad": "SAME_LOWER"}, tol=SUMS, name="depthwise_same_lower"),
    Case("Conv", (IMG, W3), {"auto_pad": "VALID", "kernel_shape": [3, 3]}, tol=SUMS, name="valid"),
    Case("Conv", (R.f(2, 3, 9), R.f(5, 3, 3)), {"pads": [2, 1], "strides": [2]}, tol=SUMS, name="1d"),
    Case("Conv", (R.f(1, 2, 4, 5, 4), R.f(3, 2, 2, 3, 2), R.f(3)), {"pads": [1, 1, 0, 0, 1, 1]},
         tol=SUMS, name="3d"),
    Case("ConvTranspose", (IMG, R.f(4, 3, 3, 3), R.f(3)), {"strides": [2, 2]}, tol=SUMS, name="stride"),
    Case("ConvTranspose", (IMG, R.f(4, 3, 3, 3)),
         {"strides": [2, 3], "pads": [1, 0, 1, 2], "output_padding": [1, 1]}, tol=SUMS, name="pads_output_padding"),
    # onnx's reference ConvTranspose mishandles group > 1 with batch > 1.
    Case("ConvTranspose", (IMG, R.f(4, 2, 3, 3)), {"group": 2, "dilations": [2, 2]}, tol=SUMS,
         oracle="ort", name="group_dilated"),
    Case("ConvTranspose", (IMG, R.f(4, 3, 3, 3)), {"strides": [2, 2], "output_shape": [15, 13]},
         tol=SUMS, name="output_shape"),
    Case("ConvTranspose", (IMG, R.f(4, 3, 3, 3)), {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
         tol=SUMS, name="same_upper"),
    Case("ConvTranspose", (R.f(1, 2, 5), R.f(2, 3, 4)), {"strides": [3]}, tol=SUMS, name="1d"),
    Case("MaxPool", (IMG,), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("MaxPool", (IMG,), {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]}, name="dilated"),
    Case("MaxPool", (IMG,), {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER", "strides": [2, 2]}, name="same_upper"),
    Case("MaxPool", (IMG,), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, name="ceil"),
    Case("MaxPool", (IMG,), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]},
         outputs=2, name="indices"),
    Case("MaxPool", (IMG,), {"kernel_shape": [2, 2], "strides": [2, 2], "storage_order": 1},
         outputs=2, name="indices_column_major"),
    Case("MaxPool", (R.f(2, 3, 10),), {"kernel_shape": [3], "strides": [2], "pads": [1, 2]}, name="1d"),
    Case("MaxPool", (R.f(1, 2, 5, 4, 6),), {"kernel_shape": [2, 2, 3]}, name="3d"),
    # onnx's reference pads with NaN, which integer arrays cannot hold.
    Case("MaxPool", (R.i(1, 2, 5, 5, lo=-100, hi=100, dtype=np.int8),), {"kernel_shape": [2, 2]},
         oracle="ort", name="int8"),
    Case("AveragePool", (IMG,), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="exclude_pad"),
    Case("AveragePool", (IMG,), {"kernel_shape": [3, 3], "pads": [1, 2, 0, 1], "count_include_pad": 1},
         name="include_pad"),
    Case("AveragePool", (IMG,), {"kernel_shape": [3, 2], "auto_pad": "SAME_LOWER"}, name="same_lower"),
    Case("AveragePool", (IMG,), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, name="ceil"),
    Case("AveragePool", (IMG,), {"kernel_shape": [2, 2], "dilations": [2, 2]}, name="dilated"),
    Case("AveragePool", (R.f(2, 3, 9),), {"kernel_shape": [4], "strides": [2]}, name="1d"),
    Case("LpPool", (IMG,), {"kernel_shape": [2, 2], "p": 2, "pads": [1, 1, 0, 0]}),
    Case("LpPool", (IMG,), {"kernel_shape": [3, 3], "p": 1, "strides": [2, 2]}, name="p1"),
    Case("GlobalAveragePool", (IMG,)),
    Case("GlobalMaxPool", (IMG,)),
    Case("GlobalLpPool", (IMG,), {"p": 3}, tol=SUMS, oracle="ort"),  # no onnx reference implementation
    Case("BatchNormalization", (IMG, R.f(4), R.f(4), R.f(4), R.f(4, lo=0.1, hi=2.0)), {"epsilon": 1e-3}),
    Case("InstanceNormalization", (IMG, R.f(4), R.f(4)), tol=SUMS),
    Case("LayerNormalization", (IMG, R.f(6), R.f(6)), outputs=3, tol=SUMS),
    Case("LayerNormalization", (IMG, R.f(7, 6)), {"axis": 2, "epsilon": 1e-3}, outputs=3, tol=SUMS, name="axis2_no_bias"),
    Case("GroupNormalization", (IMG, R.f(4), R.f(4)), {"num_groups": 2}, tol=SUMS),
    Case("RMSNormalization", (IMG, R.f(6)), opset=23, tol=SUMS),
    Case("RMSNormalization", (IMG, R.f(7, 6)), {"axis": -2}, opset=23, tol=SUMS, name="two_axes"),
    Case("LpNormalization", (IMG,), {"axis": 1}),
    Case("LpNormalization", (R.f(3, 5, lo=0.0),), {"p": 1}, name="p1"),
    Case("MeanVarianceNormalization", (IMG,), tol=SUMS),
    Case("MeanVarianceNormalization", (IMG,), {"axes": [1, 3]}, tol=SUMS, name="axes"),
    # onnx's reference LRN loops over the batch dim instead of the channels.
    Case("LRN", (IMG,), {"size": 3, "alpha": 1e-2}, oracle="ort"),
    Case("LRN", (IMG,), {"size": 5, "beta": 0.5, "bias": 2.0}, oracle="ort", name="size5"),
    Case("Gemm", (R.f(3, 5), R.f(5, 4), R.f(4)), tol=SUMS),
    Case("Gemm", (R.f(5, 3), R.f(4, 5), R.f(3, 1)), {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
         tol=SUMS, name="transposed"),
    Case("Gemm", (R.f(3, 5), R.f(5, 4)), tol=SUMS, name="no_c"),
    Case("MatMul", (R.f(3, 5), R.f(5, 4)), tol=SUMS),
    Case("MatMul", (R.f(2, 1, 3, 5), R.f(4, 5, 2)), tol=SUMS, name="batch_broadcast"),
    Case("MatMul", (R.f(5), R.f(2, 5, 3)), tol=SUMS, name="vector_matrix"),
    Case("MatMul", (R.f(2, 3, 5), R.f(5)), tol=SUMS, name="matrix_vector"),
    Case("MatMul", (R.f(5), R.f(5)), tol=SUMS, name="dot"),
    Case("MatMul", (R.i(3, 5, dtype=np.int64), R.i(5, 2, dtype=np.int64)), name="int64"),
    Case("Softmax", (IMG,)),
    Case("Softmax", (IMG,), {"axis": 1}, name="axis1"),
    Case("LogSoftmax", (IMG,), {"axis": -2}),
    Case("Hardmax", (np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32),), name="ties"),
    Case("Hardmax", (IMG,), {"axis": 1}, name="axis1"),
    Case("Flatten", (IMG,)),
    Case("Flatten", (IMG,), {"axis": 0}, name="axis0"),
    Case("Flatten", (IMG,), {"axis": -1}, name="axis_neg"),
    Case("DepthToSpace", (R.f(2, 8, 3, 2),), {"blocksize": 2}),
    Case("DepthToSpace", (R.f(2, 8, 3, 2),), {"blocksize": 2, "mode": "CRD"}, name="crd"),
    Case("SpaceToDepth", (R.f(2, 3, 4, 6),), {"blocksize": 2}),
] + [
    # onnx's reference computes cubic weights in float32 (cubic_coeff_a is np.float32),
    # kiln in float64: allow float32 rounding of the weights.
    Case("Resize", (IMG, None, np.array([1, 1, 2, 1.5], np.float32)), {"mode": mode,
         "coordinate_transformation_mode": ctm}, tol=SUMS, name=f"{mode}_{ctm}")
    for mode in ("nearest", "linear", "cubic")
    for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric")
] + [
    Case("Resize", (IMG, None, None, ints(2, 4, 3, 4)), {"mode": "linear"}, name="down_sizes"),
    Case("Resize", (IMG, None, None, ints(5, 9)), {"axes": [2, 3], "mode": "nearest",
         "keep_aspect_ratio_policy": "not_larger", "nearest_mode": "floor"}, name="axes_not_larger"),
    Case("Resize", (IMG, None, None, ints(5, 9)), {"axes": [3, 2], "mode": "linear",
         "keep_aspect_ratio_policy": "not_smaller"}, name="axes_not_smaller"),
    Case("Resize", (IMG, None, np.array([1, 1, 1.7, 0.6], np.float32)), {"mode": "nearest",
         "nearest_mode": "round_prefer_ceil"}, name="prefer_ceil"),
    Case("Resize", (IMG, None, np.array([1, 1, 1.7, 0.6], np.float32)), {"mode": "nearest",
         "nearest_mode": "ceil", "coordinate_transformation_mode": "asymmetric"}, name="ceil"),
    Case("Resize", (IMG, None, np.array([1, 1, 2, 2], np.float32)), {"mode": "cubic", "exclude_outside": 1,
         "cubic_coeff_a": -0.5}, tol=SUMS, name="cubic_exclude_outside"),
    Case("Resize", (IMG, np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], np.float32), None, ints(2, 4, 5, 5)),
         {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
          "extrapolation_value": -7.0}, name="tf_crop_and_resize"),
    Case("Resize", (R.i(1, 2, 3, 4, lo=0, hi=255, dtype=np.uint8), None, np.array([1, 1, 2, 3], np.float32)),
         name="uint8_nearest"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_onnx_reference(case: Case, device: str) -> None:
    check_case(case, device)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_coerce_2d_is_the_opset11_semantics(op: str) -> None:
    # Opset < 13: flatten to [prod(shape[:axis]), prod(shape[axis:])], normalise rows.
    x = R.f(2, 3, 4)
    expected = check_free_run(op, x.reshape(2, 12)).reshape(2, 3, 4)
    got = run_kiln(Case(op, (x,), {"axis": 1, "coerce_2d": 1}))[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def check_free_run(op: str, x2d: np.ndarray) -> np.ndarray:
    return run_kiln(Case(op, (x2d,), {"axis": -1}))[0].numpy()


def test_batchnorm_training_mode_updates_running_stats() -> None:
    x, mean, var = torch.from_numpy(IMG), torch.zeros(4), torch.ones(4)
    y, rm, rv = run_kiln(Case("BatchNormalization", (IMG, np.ones(4, np.float32), np.zeros(4, np.float32),
                                                     mean.numpy(), var.numpy()), {"training_mode": 1}))
    batch_mean = x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(rm, 0.1 * batch_mean)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    assert rv.shape == (4,)


def test_half_precision_conv_and_layernorm_run() -> None:
    got = run_kiln(Case("LayerNormalization", (IMG.astype(np.float16), np.ones(6, np.float16)), outputs=3))
    assert got[0].dtype == torch.float16 and got[1].dtype == torch.float32
    ref = run_kiln(Case("LayerNormalization", (IMG, np.ones(6, np.float32)), outputs=3))[0]
    torch.testing.assert_close(got[0].float(), ref, rtol=1e-2, atol=1e-2)

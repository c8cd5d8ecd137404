"""MaxRoiPool against onnxruntime; SwiGLU against its defining formula."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import helper

from kiln.kernels.reference.registry import lookup


def test_max_roi_pool_matches_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    rois = np.array([[0, 1, 1, 6, 8], [1, 0, 2, 11, 9], [0, 3.4, 2.6, 5.5, 4.4], [1, 9, 9, 30, 30]], np.float32)
    node = helper.make_node("MaxRoiPool", ["x", "r"], ["y"], pooled_shape=[3, 2], spatial_scale=0.8)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, x.shape),
                                            helper.make_tensor_value_info("r", 1, rois.shape)],
                              [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "r": rois})[0]
    got = lookup("MaxRoiPool").fn(torch.from_numpy(x), torch.from_numpy(rois), pooled_shape=[3, 2],
                                  spatial_scale=0.8)
    np.testing.assert_array_equal(got.numpy(), want)


def test_swiglu_is_swish_gate_times_value() -> None:
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    got = lookup("SwiGLU").fn(a, b, alpha=1.702)
    torch.testing.assert_close(got, a * torch.sigmoid(1.702 * a) * b)

"""The Triton kiln::QConv compiled on the GPU (marked: `pytest --device cuda`): every config of
the tuning spaces exact on ResNet-like shapes, float and requantized outputs, 8-bit residuals
(test_triton_qconv.py's helpers and checks)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import qconv as tq  # noqa: E402
from tests.kernels.test_triton_qconv import (F8, I8, _both, _both_8bit_residual, _channels_last,  # noqa: E402
                                             _exact_operands, _out_shape, _random_operands, _residual_8bit,
                                             _within_one_step)

GPU_SHAPES = [
    ((8, 64, 28, 28), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((8, 64, 28, 28), (256, 64, 1, 1), {}),
    ((8, 256, 14, 14), (128, 256, 1, 1), {"strides": [2, 2]}),
    ((4, 128, 15, 15), (96, 128, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((2, 16, 33, 31), (64, 16, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    ((2, 48, 9, 9), (40, 48, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s[0] + s[1])))
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_gpu_every_config_exact(shape, dtype):
    if dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = shape
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, dtype)
    # fp8: the configs that promote partial sums (FP8_ACC > 0); those of <= 128 products of
    # integers <= 16 are < 2^11, exact in any MMA accumulator of >= 12 bits.
    for config in (tq.INT8_CONFIGS if dtype == I8 else [c for c in tq.FP8_CONFIGS if c["FP8_ACC"]]):
        got, want = _both(_channels_last(x), w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25),
                          torch.tensor(0, dtype=I8), activation="Relu", config=config, **attrs)
        assert torch.equal(got, want), config


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_gpu_float_and_requantized_outputs(dtype):
    if dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = GPU_SHAPES[0]
    x, w, xsc, wsc, b, r = _random_operands(xs, ws, attrs, dtype)
    # int8 sums exactly: float32 outputs within float32 rounding. fp8 sums on MMAs of ~14 bits
    # (module docstring of qconv.py): held to float16 accuracy here; how close each fp8 config
    # comes to the float32 tolerance is what .gpu/qconv_check.py reports.
    tol = 1e-4 if dtype == I8 else 1e-2
    for config in tq.INT8_CONFIGS if dtype == I8 else tq.FP8_CONFIGS:
        got, want = _both(_channels_last(x), w, xsc, wsc, b, r, activation="Relu", config=config, **attrs)
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale / 10, msg=str(config))
        if dtype == I8:
            got, want = _both(_channels_last(x), w, xsc, wsc, b, r, torch.tensor(0.05), torch.tensor(0, dtype=I8),
                              config=config, **attrs)
            _within_one_step(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("rtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_gpu_8bit_residual_every_config_exact(dtype, rtype):
    if F8 in (dtype, rtype) and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9")
    xs, ws, attrs = GPU_SHAPES[0]
    x, w, xsc, wsc, b, _r = _exact_operands(xs, ws, attrs, dtype)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), rtype, torch.Generator().manual_seed(5))
    for config in (tq.INT8_CONFIGS if dtype == I8 else [c for c in tq.FP8_CONFIGS if c["FP8_ACC"]]):
        got, want = _both_8bit_residual(_channels_last(x), w, xsc, wsc, b, _channels_last(r), rs, rzp,
                                        config=config, **attrs)
        assert torch.equal(got, want), config

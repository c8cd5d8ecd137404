"""The Triton kiln::QConv epilogue's Relu folded into an integer output's saturation
(kernels/triton/quantize.requantize_relu): the same codes as Relu then requantize, for output
zero points inside the type's range and output scales of either sign, on both walks."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from tests.kernels.test_triton_qconv import I8, TINY, _both, _channels_last, _exact_operands  # noqa: E402

WINDOW = {**TINY, "TMA": 1}
ONNX_INT8, ONNX_UINT8 = 3, 2


@pytest.mark.parametrize("config", [TINY, WINDOW], ids=["pointer", "window"])
@pytest.mark.parametrize("out_scale, out_zp", [(0.25, 0), (0.25, -7), (0.5, 9), (-0.25, 3), (-0.5, -100)],
                         ids=["zp0", "zp-7", "zp9", "negative_scale", "negative_scale_low_zp"])
def test_relu_folded_into_the_int8_saturation_is_exact(config, out_scale, out_zp):
    xs, ws, attrs = (2, 32, 6, 6), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=11)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, _channels_last(r), torch.tensor(out_scale),
                      torch.tensor(out_zp, dtype=I8), activation="Relu", config=config, **attrs)
    assert torch.equal(got, want)
    assert (got == out_zp).any() and (got != out_zp).any()       # Relu's zeros and values both present


def test_relu_folded_for_uint8_outputs():
    xs, ws, attrs = (2, 32, 5, 5), (16, 32, 1, 1), {}
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=12)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, None, torch.tensor(0.25),
                      torch.tensor(17, dtype=torch.uint8), activation="Relu", **attrs)
    assert got.dtype == torch.uint8 and torch.equal(got, want) and int(got.min()) == 17

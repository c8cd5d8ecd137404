"""The dequantize-then-float fallback tactics for kiln::QMatMul / kiln::QConv, against the reference.

The kernels are plain torch, so they run here on CPU in float32 (the GPU runs them in the
layer's float type); supports() is checked for the cuda queries the tuner makes.
"""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference.registry import lookup
from kiln.tactics import TacticQuery, candidates
from kiln.tactics.quantized_fallback import dequant_qconv, dequant_qmatmul

TOL = dict(rtol=1e-4, atol=1e-4)


def _q(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.float8_e4m3fn:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_qmatmul_matches_the_reference(dtype, trans_b):
    a = _q((2, 5, 32), dtype, 0)
    b = _q((16, 32) if trans_b else (32, 16), dtype, 1)
    a_s, b_s = torch.tensor(0.02), torch.rand(16, generator=torch.Generator().manual_seed(2)) * 0.01 + 0.001
    bias, res = torch.randn(16), torch.randn(2, 5, 16)
    kw = dict(trans_b=trans_b, activation="Relu", activation_params=[])
    want = lookup("kiln::QMatMul").fn(a, b, a_s, None, b_s, None, bias, res, **kw)
    got = dequant_qmatmul(a, b, a_s, None, b_s, None, bias, res, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **TOL)
    # requantized to int8: within one step of the reference's rounding
    out_s, out_zp = torch.tensor(0.05), torch.tensor(0, dtype=torch.int8)
    want = lookup("kiln::QMatMul").fn(a, b, a_s, None, b_s, None, bias, res, out_s, out_zp, **kw)
    got = dequant_qmatmul(a, b, a_s, None, b_s, None, bias, res, out_s, out_zp, **kw)
    assert got.dtype == torch.int8 and (got.int() - want.int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[0, 0, 1, 1]),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 2])])
def test_qconv_matches_the_reference(dtype, attrs):
    x = _q((2, 8, 7, 7), dtype, 3)
    w = _q((6, 8, 3, 3), dtype, 4)
    x_s, w_s = torch.tensor(0.03), torch.full((6,), 0.004)
    bias = torch.randn(6)
    want = lookup("kiln::QConv").fn(x, w, x_s, None, w_s, None, bias, None, **attrs)
    got = dequant_qconv(x, w, x_s, None, w_s, None, bias, None, **attrs)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, **TOL)


def test_zero_points_are_subtracted():
    a = torch.randint(0, 256, (3, 32), dtype=torch.uint8)
    b = torch.randint(-127, 128, (32, 4), dtype=torch.int8)
    a_s, a_zp, b_s = torch.tensor(0.1), torch.tensor(128, dtype=torch.uint8), torch.tensor(0.01)
    want = lookup("kiln::QMatMul").fn(a, b, a_s, a_zp, b_s)
    torch.testing.assert_close(dequant_qmatmul(a, b, a_s, a_zp, b_s), want, **TOL)


def test_offered_after_the_8_bit_tactics_on_cuda_only():
    q = TacticQuery("kiln::QMatMul", "cuda", ("int8", "int8", "float16", None, "float16"), {},
                    ((4096, 768), (768, 768), (), None, (768,)))
    names = [t.name for t in candidates(q)]
    assert "kiln::QMatMul.dequant_cublas" in names and names[-1] == "kiln::QMatMul.reference"
    conv = TacticQuery("kiln::QConv", "cuda", ("float8_e4m3fn", "float8_e4m3fn", "float16", None, "float16"), {},
                       ((64, 64, 56, 56), (64, 64, 3, 3), (), None, (64,)), layout="nhwc")
    assert "kiln::QConv.dequant_cudnn" in [t.name for t in candidates(conv)]
    cpu = TacticQuery("kiln::QMatMul", "cpu", ("int8", "int8", "float16", None, "float16"), {})
    assert [t.name for t in candidates(cpu)] == ["kiln::QMatMul.reference"]

"""The Triton DynamicQuantizeLinear (kernels/triton/dynamic_quantize.py) against the reference, bit
for bit: codes, scale and zero point, for every float input type, ranges on both sides of zero,
one side only, all zeros (the 1/255 scale), ties of the division, sizes past one block, and an
empty input. CPU: Triton's interpreter; compiled with `pytest --device cuda` on a GPU."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available

REF = lookup("DynamicQuantizeLinear").fn
SIGNED_REF = lookup("kiln::DynamicQuantize").fn
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = {"BLOCK": 64, "num_warps": 4, "PROGRAMS": 5}

if triton_available():
    from kiln.kernels.triton import dynamic_quantize
else:
    dynamic_quantize = None
pytestmark = pytest.mark.skipif(dynamic_quantize is None, reason="Triton is not installed")


def _check(x: torch.Tensor, signed: bool = False) -> tuple[torch.Tensor, ...]:
    got = dynamic_quantize.dynamic_quantize_linear(x.to(DEV), config=SMALL, signed=signed)
    want = (SIGNED_REF if signed else REF)(x)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.cpu(), w), (g, w)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lo, hi", [(-3.0, 5.0), (0.5, 9.0), (-7.0, -0.25), (-1e-3, 2e-3)])
def test_codes_scale_and_zero_point_are_the_references(dtype, lo, hi):
    g = torch.Generator().manual_seed(int(hi * 100))
    x = (torch.rand(5, 77, generator=g) * (hi - lo) + lo).to(dtype)
    y, scale, zp = _check(x)
    assert int(y.min()) == 0 or lo > 0 and int(zp) == 0           # the range's ends map to 0 and 255
    assert y.shape == x.shape and scale.dtype == dtype and zp.dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_signed_codes_are_the_codes_less_128(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(9, 50, generator=g) * 3 + 1).to(dtype)
    y8, s8, z8 = _check(x, signed=True)
    y, s, z = REF(x)
    assert y8.dtype == z8.dtype == torch.int8 and torch.equal(s8.cpu(), s)
    assert torch.equal(y8.cpu().to(torch.int16) - z8.cpu().to(torch.int16), y.to(torch.int16) - z.to(torch.int16))
    _check(torch.zeros(0, 4), signed=True)


def test_all_zeros_take_a_scale_of_one_255th():
    _, scale, zp = _check(torch.zeros(3, 40))
    assert float(scale) == pytest.approx(1 / 255) and int(zp) == 0


def test_ties_round_to_even():
    # range [-255, 0]: scale 1, zero point 255; x + 0.5 halfway between codes
    x = torch.tensor([-255.0, -254.5, -253.5, -0.5, -1.5, 0.0, -100.5])
    y, scale, zp = _check(x)
    assert float(scale) == 1.0 and int(zp) == 255
    assert y.cpu().tolist() == [0, 1, 1, 255, 253, 255, 155]   # -254.5 -> -254, -253.5 -> -254


def test_many_blocks_and_a_strided_input():
    g = torch.Generator().manual_seed(1)
    _check(torch.randn(33, 70, generator=g) * 4 + 1)
    _check((torch.randn(40, 30, generator=g) - 2).t())


def test_empty():
    y, scale, zp = _check(torch.zeros(0, 8))
    assert y.numel() == 0

"""The Triton kiln::QConv on an X with a zero point: uint8 activations (ONNX Runtime's default
asymmetric QDQ models) and int8 ones with a non-zero zero point, against the reference.

The kernel shifts uint8 values by 128 into int8 (exact), fills padding taps with the zero point's
code (0 once dequantized, as the reference pads: per element, or in the TAPS walk by reading a row
of zero-point codes for a padded pixel) and subtracts zero point x sum(W) per output channel from
the int32 accumulator, so on the exact operands of test_triton_qconv.py the
requantized output equals the reference's bit for bit on every walk. The framing copies (C not a
multiple of 4, the folded stem) frame X with the zero point's code; the TMA (WINDOW) walk, whose
copy engine pads with 0, takes such an X only in 1x1 stride-1 convs, which read no padding."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.reference.quantized import qconv as reference_qconv  # noqa: E402
from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402
from tests.kernels.test_triton_qconv import (DEV, GEOMETRIES, I8, TINY, _channels_last, _exact_operands,  # noqa: E402
                                             _ints, _out_shape, _residual_8bit, _to)

U8 = torch.uint8
# The walks an X with a zero point takes: every geometry whose C is a multiple of 4 (no framed copy).
WALKED = [name for name, (xs, _ws, _a, _p) in GEOMETRIES.items() if xs[1] % 4 == 0]


def _x(xs, dtype, zp, seed=0):
    """X within 40 codes of its zero point (exact sums, as the int8 operands), and the zero point
    tensor (None for zp None)."""
    g = torch.Generator().manual_seed(seed)
    center = 0 if zp is None else zp
    lo, hi = (0, 255) if dtype == U8 else (-128, 127)
    x = _ints(xs, max(lo, center - 40), min(hi, center + 40), g, torch.int64).to(dtype)
    return x, None if zp is None else torch.tensor(zp, dtype=dtype)


def _run(x, x_zp, name, residual=None, rs=None, rzp=None, config=TINY):
    xs, ws, attrs, _ = GEOMETRIES[name]
    _, w, xsc, wsc, b, _r = _exact_operands(xs, ws, attrs, I8)
    args = (_channels_last(x), w, xsc, x_zp, wsc, None, b, residual, torch.tensor(0.25), torch.tensor(0, dtype=I8),
            rs, rzp)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=config, **attrs).cpu()
    want = reference_qconv(*args, activation="Relu", **attrs)
    return got, want


@pytest.mark.parametrize("dtype, zp", [(U8, 37), (U8, 200), (U8, None), (I8, -5)],
                         ids=["uint8-zp37", "uint8-zp200", "uint8-no-zp", "int8-zp-5"])
@pytest.mark.parametrize("name", WALKED)
def test_zero_point_exact_on_every_walk(name, dtype, zp):
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, x_zp = _x(xs, dtype, zp)
    got, want = _run(x, x_zp, name)
    assert int((want != 0).sum()) > 0 and torch.equal(got, want)


@pytest.mark.parametrize("name", ["1x1s1", "3x3s1p1"])
def test_uint8_with_an_8bit_residual(name):
    """ONNX Runtime's QDQ ResNet block: uint8 X and residual, both with zero points."""
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, x_zp = _x(xs, U8, 90, seed=2)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), U8, torch.Generator().manual_seed(5))
    got, want = _run(x, x_zp, name, _channels_last(r), rs, rzp)
    assert torch.equal(got, want)


FRAMED = [name for name, (xs, _ws, _a, _p) in GEOMETRIES.items() if xs[1] % 4]


@pytest.mark.parametrize("dtype, zp", [(U8, 37), (U8, None), (I8, -5)], ids=["uint8-zp37", "uint8-no-zp", "int8-zp-5"])
@pytest.mark.parametrize("name", FRAMED)
def test_zero_point_through_the_framing_copy(name, dtype, zp):
    """C not a multiple of 4 (ONNX Runtime's uint8 stem): the framing copy frames X with its zero
    point's code (frame.py's fill), so the padding dequantizes to 0 as the reference's does."""
    x, x_zp = _x(GEOMETRIES[name][0], dtype, zp)
    got, want = _run(x, x_zp, name)
    assert int((want != 0).sum()) > 0 and torch.equal(got, want)


@pytest.mark.parametrize("dtype, zp", [(U8, 200), (I8, 9)], ids=["uint8-zp200", "int8-zp9"])
def test_zero_point_through_the_folded_walk(dtype, zp):
    """The folded stem (config S2D, qconv_s2d.py): its framing copy holds the zero point too."""
    s2d = {**TINY, "BLOCK_K": 64, "S2D": 1}
    x, x_zp = _x(GEOMETRIES["stem_c3"][0], dtype, zp)
    got, want = _run(x, x_zp, "stem_c3", config=s2d)
    assert torch.equal(got, want)


@pytest.mark.parametrize("mid_type, mid_zp", [(U8, 131), (I8, -9), (U8, None)], ids=["uint8", "int8", "uint8-no-zp"])
@pytest.mark.parametrize("name", ["1x1s1", "1x1s2", "3x3s1p1", "stem_c3"])
def test_mid_quantization_before_the_residual(name, mid_type, mid_zp):
    """mid_scale / mid_zp (ONNX Runtime's Conv -> Q -> DQ -> Add(DQ(r)) -> Q as one layer): the conv's
    value quantized to its own codes (ties to even, saturated) and back before the residual joins."""
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, x_zp = _x(xs, U8, 90, seed=3)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), U8, torch.Generator().manual_seed(6))
    _, w, xsc, wsc, b, _r = _exact_operands(xs, ws, attrs, I8)
    mzp = None if mid_zp is None else torch.tensor(mid_zp, dtype=mid_type)
    args = (_channels_last(x), w, xsc, x_zp, wsc, None, b, _channels_last(r), torch.tensor(0.25),
            torch.tensor(3, dtype=U8), rs, rzp, None, torch.tensor(0.5), mzp)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=TINY, **attrs).cpu()
    want = reference_qconv(*args, activation="Relu", **attrs)
    plain = reference_qconv(*args[:13], activation="Relu", **attrs)
    assert torch.equal(got, want) and not torch.equal(want, plain)   # the mid rounding made a difference


TINY_TMA = {**TINY, "BLOCK_K": 32, "TMA": 1}


@pytest.mark.parametrize("mid", [False, True], ids=["plain", "mid"])
@pytest.mark.parametrize("dtype, zp", [(U8, 37), (U8, None), (U8, 0), (I8, -5)],
                         ids=["uint8-zp37", "uint8-no-zp", "uint8-zp0", "int8-zp-5"])
@pytest.mark.parametrize("name", ["1x1s1", "1x1s2", "3x3s1p1"])
def test_window_walk_takes_a_zero_point_where_no_box_reads_padding(name, dtype, zp, mid, monkeypatch):
    """Config TMA: the WINDOW walk runs a uint8 X (shifted by 128) with X's zero point and the mid
    quantization exactly, where the copy engine's zero fill is the right padding: a 1x1 stride-1
    conv (no padding read) with any zero point, a padded 3x3 conv with a zero point of 0 (ONNX
    Runtime's activations after a Relu). A padded conv with another zero point keeps the pointer
    walks, and so does the 1x1 stride-2 conv here (H odd: no strided view)."""
    from kiln.kernels.triton.qconv_window import descriptor_type
    from tests.kernels.test_triton_qconv import window_spy

    calls = window_spy(monkeypatch)
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, x_zp = _x(xs, dtype, zp, seed=4)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), U8, torch.Generator().manual_seed(7))
    _, w, xsc, wsc, b, _r = _exact_operands(xs, ws, attrs, I8)
    extra = (None, torch.tensor(0.5), torch.tensor(131, dtype=U8)) if mid else ()
    args = (_channels_last(x), w, xsc, x_zp, wsc, None, b, _channels_last(r), torch.tensor(0.25),
            torch.tensor(3, dtype=U8), rs, rzp, *extra)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=TINY_TMA, **attrs).cpu()
    want = reference_qconv(*args, activation="Relu", **attrs)
    assert torch.equal(got, want)
    windowed = name == "1x1s1" or (name == "3x3s1p1" and not zp)
    assert len(calls) == (1 if windowed and descriptor_type() is not None else 0)


def test_accumulator_bound_counts_the_zero_point():
    w = torch.full((4, 64, 3, 3), 127, dtype=I8)
    k = 64 * 9
    assert plan.small_accumulator(k, w, 128) == (k * 128 * 127 < plan.SMALL_ACC)
    assert not plan.small_accumulator(k, w, 255) or k * 255 * 127 < plan.SMALL_ACC
    assert torch.equal(plan.weight_sums(w), torch.full((4,), 127 * k, dtype=torch.int32))
    zp = torch.tensor(37, dtype=U8)
    row = plan.zero_point_row(zp)       # what padded pixels of the TAPS walk read
    assert row.dtype == U8 and row.shape == (plan.ZERO_POINT_ROW,) and bool((row == 37).all())
    assert plan.zero_point_row(zp) is row

"""The Triton implicit-GEMM kiln::QConv (kernels/triton/qconv.py) against the reference kiln::QConv.

CPU: the kernel runs in Triton's interpreter at tiny shapes and tiles (tiles the GPU compiles
too: BLOCK_K >= 32; the same tests run compiled with `pytest --device cuda`). int8 and float8 both
run there (the interpreter's fp8 dot sums in float32: exact for the small integer-valued
fp8 inputs the exact tests use). Exact tests pick power-of-two scales and small integer
bias/residual values, so every float32 step of the kernel's epilogue is exact and the
requantized output must equal the reference's bit for bit, ties included. Tolerance tests
use arbitrary scales: float outputs agree to float32 rounding, requantized ones within one
step (the epilogue rounds in float32, the reference from float64).
Edges and refusals: test_triton_qconv_edges.py; the real tuning spaces compiled on the GPU:
test_triton_qconv_gpu.py."""
from __future__ import annotations

import math

import pytest
import torch

from kiln.kernels.reference.fused import ACTIVATIONS
from kiln.kernels.reference.quantized import qconv as reference_qconv
from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"          # interpreted on CPU, compiled on the GPU
TINY = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2,
        "FP8_ACC": 32}
I8, F8 = torch.int8, torch.float8_e4m3fn
ONNX_INT8, ONNX_UINT8, ONNX_FP8 = 3, 2, 17

# (x shape, w shape, conv attributes, the K walk it takes with TINY): every path and geometry.
GEOMETRIES = {
    "1x1s1": ((2, 32, 5, 5), (16, 32, 1, 1), {}, plan.PIXELS),
    "1x1s2": ((2, 32, 7, 7), (24, 32, 1, 1), {"strides": [2, 2]}, plan.TAPS),
    "3x3s1p1": ((2, 32, 6, 6), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}, plan.TAPS),
    "3x3s2p1": ((2, 64, 7, 7), (16, 64, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, plan.TAPS),
    "7x7s2p3": ((2, 16, 9, 9), (16, 16, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, plan.ROWS),
    "3x3d2": ((2, 16, 8, 7), (16, 16, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, plan.TAPS),
    "asym_pads": ((1, 32, 7, 6), (16, 32, 3, 2), {"pads": [0, 1, 2, 0], "strides": [1, 2]}, plan.TAPS),
    "same_upper": ((1, 16, 7, 6), (24, 16, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, plan.ROWS),
    "stem_c3": ((2, 3, 11, 11), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, plan.ROWS),
    "c24_dil_h": ((1, 24, 8, 8), (16, 24, 3, 3), {"pads": [2, 1, 2, 1], "dilations": [2, 1]}, plan.ROWS),
    "1x1c16": ((2, 16, 5, 5), (16, 16, 1, 1), {}, plan.ROWS),
    # C not a multiple of 32 with a dilation along W: taps over channels padded to BLOCK_K.
    "c40_dil_w": ((1, 40, 7, 7), (16, 40, 3, 3), {"pads": [1, 2, 1, 2], "dilations": [1, 2]}, plan.TAPS),
    "c3_dil_w": ((2, 3, 8, 9), (16, 3, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, plan.TAPS),
    # No padding reached: every tap inside X, loads masked by channel only (the launcher's INSIDE).
    "c40_dil_w_unpadded": ((1, 40, 7, 9), (16, 40, 3, 3), {"dilations": [1, 2], "strides": [2, 1]}, plan.TAPS),
    "c24_kw1_dil_w": ((1, 24, 7, 6), (16, 24, 3, 1), {"pads": [1, 0, 1, 0], "dilations": [1, 2]}, plan.ROWS),
    # ROWS over a framed copy (C not a multiple of 4): asymmetric and SAME padding, strides, dilation along H.
    "c5_s2_asym": ((2, 5, 10, 9), (16, 5, 3, 3), {"pads": [0, 2, 1, 0], "strides": [2, 3]}, plan.ROWS),
    "c3_same_dil_h": ((1, 3, 9, 8), (16, 3, 3, 5), {"auto_pad": "SAME_UPPER", "dilations": [2, 1]}, plan.ROWS),
}


def _ints(shape, lo, hi, g, dtype=I8):
    """Integers in [lo, hi] as `dtype` (every one of them exact in int8 and in float8 e4m3)."""
    return torch.randint(lo, hi + 1, shape, generator=g).to(dtype)


def _out_shape(xs, ws, attrs):
    geo = plan.conv_geometry(xs, ws, **attrs)
    return (xs[0], ws[0], geo.oh, geo.ow)


def _exact_operands(xs, ws, attrs, dtype=I8, seed=0):
    """Operands whose every epilogue step is exact in float32 (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    lo = -127 if dtype == I8 else -4              # fp8: small integers, so sums stay exact
    x = _ints(xs, lo, -lo, g, dtype)
    w = _ints(ws, lo, -lo, g, dtype)
    x_scale = torch.tensor(2.0 ** -6)
    w_scale = 2.0 ** -_ints((ws[0],), 4, 8, g, torch.int64).float()      # per channel, powers of two
    bias = _ints((ws[0],), -40, 40, g, torch.int64).float() / 4
    residual = _ints(_out_shape(xs, ws, attrs), -40, 40, g, torch.int64).float() / 4
    return x, w, x_scale, w_scale, bias, residual


def _to(device, *ts):
    return [None if t is None else t.to(device) for t in ts]


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def _call(fn, x, w, x_scale, w_scale, bias=None, residual=None, out_scale=None, out_zp=None, **attrs):
    return fn(x, w, x_scale, None, w_scale, None, bias, residual, out_scale, out_zp, **attrs)


def _both(x, w, x_scale, w_scale, bias=None, residual=None, out_scale=None, out_zp=None, config=TINY, **attrs):
    """(kernel output, reference output): the kernel on DEV, the reference on CPU."""
    args = (x, w, x_scale, w_scale, bias, residual, out_scale, out_zp)
    got = _call(tq.qconv, *_to(DEV, *args), config=config, **attrs)
    want = _call(reference_qconv, *args, **attrs)
    assert got.shape == want.shape and got.dtype == want.dtype
    return got.cpu(), want


def window_spy(monkeypatch):
    """The WINDOW walk's launches from now on: each call's flat_rows argument."""
    calls = []
    real = tq.launch_window
    monkeypatch.setattr(tq, "launch_window", lambda *a, **k: (calls.append(a[6]), real(*a, **k)))
    return calls


def _within_one_step(got, want, max_fraction=1e-3):
    """Requantized outputs: at most one quantization step apart, in few elements (at most one in
    1000 and at least one allowed: compiler/tolerance.py's rule for quantized ops)."""
    if got.dtype == F8:
        # One float8 step: the gap to the neighbouring e4m3 value is at most 2^-3 of the magnitude.
        g, w = got.float(), want.float()
        diff = (g - w).abs()
        assert bool((diff <= w.abs().clamp_min(2.0 ** -6) / 8 + 2.0 ** -9).all())
    else:
        diff = (got.int() - want.int()).abs()
        assert int(diff.max()) <= 1
    assert int((diff > 0).sum()) <= math.ceil(diff.numel() * max_fraction)


# --- exact: every geometry, int8 and fp8, requantized with residual and Relu --------------------

@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_int8_requantized_exact(name):
    xs, ws, attrs, path = GEOMETRIES[name]
    geo = plan.conv_geometry(xs, ws, **attrs)
    assert plan.k_loop(xs[1], geo, TINY["BLOCK_K"], True, *xs[2:]).path == path
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25),
                      torch.tensor(0, dtype=I8), activation="Relu", **attrs)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert int(want.max()) == 127 and int((want == 0).sum()) > 0      # saturation and Relu both exercised
    assert torch.equal(got, want)


def _residual_8bit(shape, rtype, g):
    """(R, residual_scale, residual_zp): small integers (exact in every 8-bit type), a power-of-two
    scale, a zero point for the integer types."""
    if rtype == F8:
        return _ints(shape, -12, 12, g, F8), torch.tensor(0.25), None
    lo, zp = (0, 7) if rtype == torch.uint8 else (-40, -3)
    return _ints(shape, lo, lo + 80, g, rtype), torch.tensor(0.25), torch.tensor(zp, dtype=rtype)


def _both_8bit_residual(x, w, xsc, wsc, b, r, rs, rzp, config=TINY, **attrs):
    args = (x, w, xsc, None, wsc, None, b, r, torch.tensor(0.25), torch.tensor(0, dtype=I8), rs, rzp)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=config, **attrs)
    want = reference_qconv(*args, activation="Relu", **attrs)
    assert got.dtype == want.dtype == I8
    return got.cpu(), want


@pytest.mark.parametrize("rtype", [I8, torch.uint8, F8], ids=["int8", "uint8", "fp8"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("name", ["1x1s1", "3x3s1p1", "stem_c3"])
def test_8bit_residual_exact(name, dtype, rtype):
    """A residual read in 8 bits (residual_scale/residual_zp) on every walk: bit-exact."""
    xs, ws, attrs, _path = GEOMETRIES[name]
    x, w, xsc, wsc, b, _r = _exact_operands(xs, ws, attrs, dtype)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), rtype, torch.Generator().manual_seed(5))
    got, want = _both_8bit_residual(_channels_last(x), w, xsc, wsc, b, _channels_last(r), rs, rzp, **attrs)
    assert int((want == 0).sum()) > 0 and torch.equal(got, want)


def test_8bit_residual_refusals():
    xs, ws, attrs, _path = GEOMETRIES["1x1s1"]
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs)
    with pytest.raises(AssertionError, match="a residual with residual_scale is int8, uint8 or float8_e4m3fn"):
        tq.qconv(*_to(DEV, x, w, xsc, None, wsc, None, b, r, None, None, torch.tensor(0.5)), config=TINY)
    with pytest.raises(AssertionError, match="residual_zp: one value of the residual's type"):
        tq.qconv(*_to(DEV, x, w, xsc, None, wsc, None, b, r.to(I8), None, None, torch.tensor(0.5),
                      torch.tensor(0, dtype=torch.uint8)), config=TINY)


@pytest.mark.parametrize("name", ["1x1s1", "3x3s2p1", "7x7s2p3", "3x3d2", "stem_c3", "c40_dil_w"])
def test_fp8_exact(name):
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, F8)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, r, **attrs)                      # float32 out
    assert torch.equal(got, want)
    got, want = _both(x, w, xsc, wsc, b, r, torch.tensor(2.0 ** -7), out_dtype=ONNX_FP8, **attrs)
    assert float(want.float().abs().max()) == 448.0                                      # saturates
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))               # bits, -0 too
    got, want = _both(x, w, xsc, wsc, b, r, torch.tensor(0.5), out_dtype=ONNX_INT8, activation="Relu", **attrs)
    assert torch.equal(got, want)


def test_uint8_output_with_zero_point_and_the_default_type():
    xs, ws, attrs, _ = GEOMETRIES["3x3s1p1"]
    x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, seed=1)
    got, want = _both(x, w, xsc, wsc, b, None, torch.tensor(0.25), torch.tensor(128, dtype=torch.uint8), **attrs)
    assert got.dtype == torch.uint8 and int(want.min()) == 0 and int(want.max()) == 255
    assert torch.equal(got, want)
    got, want = _both(x, w, xsc, wsc, b, None, torch.tensor(0.5), **attrs)   # no zero point, no out_dtype: uint8
    assert got.dtype == torch.uint8 and torch.equal(got, want)


def test_rounds_half_to_even():
    # Y = x / 2 from input channel 0 alone: x = -24..23 puts every odd x on a tie (-11.5 ... 11.5).
    x = torch.zeros(1, 16, 8, 6, dtype=I8)
    x[0, 0] = torch.arange(-24, 24, dtype=I8).reshape(8, 6)
    w = torch.zeros(16, 16, 1, 1, dtype=I8)
    w[:, 0] = 1
    got, want = _both(x, w, torch.tensor(1.0), torch.tensor(1.0), None, None, torch.tensor(2.0),
                      torch.tensor(0, dtype=I8))
    half_even = torch.round(torch.arange(-24, 24) / 2).to(I8).reshape(8, 6)     # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert torch.equal(got, want) and torch.equal(got[0, 3], half_even)


# --- tolerance: arbitrary scales, every output type --------------------------------------------

def _random_operands(xs, ws, attrs, dtype=I8, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == I8:
        x, w = _ints(xs, -128, 127, g), _ints(ws, -127, 127, g)
    else:
        x = (torch.randn(xs, generator=g) * 3).to(F8)
        w = (torch.randn(ws, generator=g) * 3).to(F8)
    x_scale = torch.tensor(0.0173)
    w_scale = torch.rand(ws[0], generator=g) * 0.004 + 0.001
    bias = torch.randn(ws[0], generator=g)
    residual = torch.randn(_out_shape(xs, ws, attrs), generator=g)
    return x, w, x_scale, w_scale, bias, residual


@pytest.mark.parametrize("out_type", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_float_outputs(dtype, out_type):
    xs, ws, attrs, _ = GEOMETRIES["3x3s2p1"]
    x, w, xsc, wsc, b, r = _random_operands(xs, ws, attrs, dtype)
    got, want = _both(_channels_last(x), w, xsc.to(out_type), wsc, b, r.to(out_type), activation="Relu", **attrs)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_type]
    scale = float(want.float().abs().max())
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype,out_dtype", [(I8, ONNX_INT8), (I8, ONNX_UINT8), (I8, ONNX_FP8), (F8, ONNX_FP8),
                                             (F8, ONNX_INT8)], ids=["i8-i8", "i8-u8", "i8-f8", "f8-f8", "f8-i8"])
def test_requantized_within_one_step(dtype, out_dtype):
    xs, ws, attrs, _ = GEOMETRIES["3x3s1p1"]
    x, w, xsc, wsc, b, r = _random_operands(xs, ws, attrs, dtype, seed=3)
    out_scale = torch.tensor(0.0371 if out_dtype != ONNX_FP8 else 0.0123)
    got, want = _both(x, w, xsc, wsc, b, r, out_scale, out_dtype=out_dtype, activation="LeakyRelu",
                      activation_params=[0.1], **attrs)
    _within_one_step(got, want)


def test_every_activation():
    xs, ws, attrs, _ = GEOMETRIES["1x1s1"]
    x, w, xsc, wsc, b, r = _random_operands(xs, ws, attrs, seed=4)
    params = {"LeakyRelu": [0.2], "Clip": [-0.5, 0.8], "HardSigmoid": [0.3, 0.4], "Gelu": [1.0]}
    for act in ACTIVATIONS:
        got, want = _both(x, w, xsc, wsc, b, r, activation=act, activation_params=params.get(act, []), **attrs)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()), msg=act)
    got, want = _both(x, w, xsc, wsc, b, r, activation="Gelu", activation_params=[0.0], **attrs)   # exact Gelu
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))


def test_small_accumulators_convert_exactly():
    """int8 sums below 2^22 in magnitude take the add-and-subtract conversion (module docstring):
    at the bound (K 256, X all -128, W all +-127: |sum| = 4,161,536) the float32 output is the sum
    itself, exactly; one more channel of W's magnitude takes the I2F path, also exact."""
    assert plan.small_accumulator(256, torch.full((4, 256, 1, 1), -127, dtype=I8))
    assert not plan.small_accumulator(256, torch.full((4, 256, 1, 1), -128, dtype=I8))
    assert not plan.small_accumulator(576, torch.full((4, 64, 3, 3), 127, dtype=I8))
    assert plan.small_accumulator(576, torch.full((4, 64, 3, 3), 56, dtype=I8))
    for c in (256, 288):
        x = torch.full((1, c, 3, 3), -128, dtype=I8)
        w = torch.full((32, c, 1, 1), 127, dtype=I8)
        w[1::2] = -127
        got, want = _both(_channels_last(x), w, torch.tensor(1.0), torch.tensor(1.0))
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert float(want.abs().max()) == c * 128 * 127

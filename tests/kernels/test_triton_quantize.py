"""The Triton QuantizeLinear (kernels/triton/quantize.py) against the reference, bit for bit.

CPU: Triton's interpreter; the same tests run compiled with `pytest --device cuda` on a GPU
(the reference always on CPU). Every input x scale type x output type; ties (round half to
even), saturation, the float8 grid (binade carries, subnormals, +-448, NaN), the division in
the scale's type or in `precision`, memory formats (channels_last stays channels_last,
strided inputs), empty tensors and the launcher's refusals. GPU (marked): a ResNet-sized
activation."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto

from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available

REF = lookup("QuantizeLinear").fn
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
SMALL = {"BLOCK": 64, "num_warps": 4}
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# (output_dtype attribute, zero point): each output type, with and without a zero point.
OUTPUTS = [(TensorProto.INT8, torch.tensor(3, dtype=torch.int8)), (TensorProto.INT8, None),
           (TensorProto.UINT8, torch.tensor(128, dtype=torch.uint8)), (0, None),
           (TensorProto.FLOAT8E4M3FN, None), (0, torch.tensor(0.0).to(torch.float8_e4m3fn))]

if triton_available():
    from kiln.kernels.triton import quantize
else:
    quantize = None
pytestmark = pytest.mark.skipif(quantize is None, reason="Triton is not installed")


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal dtype, shape and bits, -0 included. A float8 NaN must be NaN where the reference's
    is, of either sign: NaN's sign is no part of the contract (x86 keeps it through arithmetic,
    the GPU's arithmetic and conversion drop it)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    fp8 = want.dtype == torch.float8_e4m3fn
    got, want = got.cpu().view(torch.uint8), want.view(torch.uint8)
    if fp8:
        nan = (want & 0x7F) == 0x7F
        assert torch.equal(got[nan] & 0x7F, want[nan] & 0x7F)
        got, want = got[~nan], want[~nan]
    assert torch.equal(got, want)


def _run(x, scale, zp=None, **attrs):
    args = [t if t is None else t.to(DEV) for t in (x, scale, zp)]
    got = quantize.quantize_linear(*args, config=SMALL, **attrs)
    want = REF(x, scale, zp, **attrs)
    _same(got, want)
    return got


@pytest.mark.parametrize("x_dt", FLOATS)
@pytest.mark.parametrize("scale_dt", FLOATS)
def test_every_input_scale_and_output_type(x_dt, scale_dt):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 50, generator=g) * 60).to(x_dt)
    for out, zp in OUTPUTS:
        _run(x, torch.tensor(0.37, dtype=scale_dt), zp, output_dtype=out)


def test_ties_round_half_to_even_and_saturate():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 128.5, -128.5, -129.5, 1e9, -1e9,
                      float("inf"), float("-inf"), 0.49999997, 3.0])
    got = _run(x, torch.tensor(1.0), torch.tensor(0, dtype=torch.int8), output_dtype=TensorProto.INT8)
    assert got.tolist() == [0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128, 127, -128, 127, -128, 0, 3]
    got = _run(x, torch.tensor(1.0), torch.tensor(10, dtype=torch.uint8))
    assert got.tolist()[:6] == [10, 12, 12, 10, 8, 8] and got.tolist()[11:15] == [255, 0, 255, 0]


def test_float8_grid_carries_subnormals_saturation_and_nan():
    # Values near every kind of float8 boundary: a rounding carry into the next binade
    # (15.5 * 2^e), ties between grid points, subnormals (multiples of 2^-9), the largest
    # finite value and beyond (saturate=1), NaN.
    base = torch.tensor([1.0, 1.0625, 1.1875, 1.9375, 1.96875, 0.5 + 2 ** -5, 3.0, 7.75, 15.5, 127.9, 240.0,
                         447.0, 448.0, 460.0, 464.0, 1e6, float("inf"), 2 ** -7, 2 ** -9, 1.5 * 2 ** -9,
                         2.5 * 2 ** -9, 2 ** -10, 2 ** -11, 0.0, -0.0, float("nan")])
    x = torch.cat([base, -base, base * 1.0001, base * 0.9999])
    for zp in (None, torch.tensor(0.5).to(torch.float8_e4m3fn)):
        _run(x, torch.tensor(1.0), zp, output_dtype=TensorProto.FLOAT8E4M3FN)
    _run(x.half(), torch.tensor(0.25, dtype=torch.float16), None, output_dtype=TensorProto.FLOAT8E4M3FN)


def test_division_in_the_scale_type_or_precision():
    # float32 X with a float16/bfloat16 scale divides in the 16-bit type (X rounded to it
    # first); `precision` overrides the scale's type. Both move results vs float32 math.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, generator=g) * 100
    for scale_dt in (torch.float16, torch.bfloat16):
        _run(x, torch.tensor(0.0713, dtype=scale_dt), torch.tensor(0, dtype=torch.int8), output_dtype=TensorProto.INT8)
    _run(x, torch.tensor(0.0713), None, output_dtype=TensorProto.INT8, precision=TensorProto.BFLOAT16)
    _run(x, torch.tensor(0.0713), None, output_dtype=TensorProto.INT8, precision=TensorProto.FLOAT16)


def test_memory_format_is_kept():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 8, 5, 3, generator=g) * 40).half().contiguous(memory_format=torch.channels_last)
    got = _run(x, torch.tensor(0.3, dtype=torch.float16), torch.tensor(0, dtype=torch.int8),
               output_dtype=TensorProto.INT8)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert got.stride() == x.stride()
    # Not dense (a strided slice, a transposed view with a gap): made contiguous first. What
    # the kernel gets is the copy on DEV: .to("cuda") makes a non-dense view dense (here
    # channels_last), whose strides Y then keeps; on CPU it is the view itself.
    for view in (x[:, ::2], x.float().transpose(1, 3)[..., 1:]):
        given = view.to(DEV)
        got = _run(view, torch.tensor(0.3), None)
        assert got.stride() == given.stride() if quantize.is_dense(given) else got.is_contiguous()
    _run(torch.randn(4, 6, generator=g).t(), torch.tensor(0.1), None)   # dense, transposed: kept


def test_empty_and_scalar_inputs():
    assert quantize.quantize_linear(torch.zeros(0, 3, device=DEV), torch.tensor(1.0, device=DEV)).shape == (0, 3)
    _run(torch.tensor(2.6), torch.tensor(0.5), torch.tensor(1, dtype=torch.int8))


@pytest.mark.parametrize("out, zp", OUTPUTS)
def test_per_channel_of_the_last_axis(out, zp):
    """SmoothQuant's activation scales: one per channel of the last axis (row-major X, also a
    transposed one, made contiguous), each channel its own scale (and zero point)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 24, generator=g) * 6
    scale = torch.rand(24, generator=g) * 0.2 + 0.01
    zp_c = None if zp is None else zp.expand(24).clone()
    for axis in (-1, 2):
        got = _run(x, scale, zp_c, axis=axis, output_dtype=out)
        assert got.shape == x.shape
    _run(x.transpose(0, 1), scale, zp_c, axis=-1, output_dtype=out)
    _run(x.half(), scale.half(), zp_c, axis=-1, output_dtype=out)


def test_launcher_refusals():
    x = torch.randn(4, 3, device=DEV)
    with pytest.raises(AssertionError, match="per channel of the last axis"):
        quantize.quantize_linear(x.t(), torch.ones(3, device=DEV), axis=1)   # X [3, 4]: axis 1 has 4
    with pytest.raises(AssertionError, match="produces"):
        quantize.quantize_linear(x, torch.ones((), device=DEV), output_dtype=TensorProto.INT4)
    with pytest.raises(AssertionError, match="saturates float8"):
        quantize.quantize_linear(x, torch.ones((), device=DEV), output_dtype=TensorProto.FLOAT8E4M3FN, saturate=0)
    with pytest.raises(AssertionError, match="float16/bfloat16/float32 X"):
        quantize.quantize_linear(x.double(), torch.ones((), device=DEV))


@pytest.mark.gpu
@pytest.mark.parametrize("out, zp", OUTPUTS)
def test_gpu_resnet_activation(out, zp):
    x = (torch.randn(32, 64, 56, 56, device="cuda") * 8).half().contiguous(memory_format=torch.channels_last)
    scale = torch.tensor(0.05, dtype=torch.float16, device="cuda")
    zp_d = None if zp is None else zp.cuda()
    for cfg in quantize.CONFIGS:
        got = quantize.quantize_linear(x, scale, zp_d, output_dtype=out, config=dict(cfg))
        _same(got, REF(x.cpu(), scale.cpu(), zp, output_dtype=out))
        assert got.is_contiguous(memory_format=torch.channels_last)


# --- divide: x / s from the reciprocal, bit for bit what div_rn gives ------------------------------

if quantize is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _divide_both(X, S, INV, Q, WANT, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(X + offs, mask=mask, other=1.0)
        s = tl.load(S + offs, mask=mask, other=1.0)
        inv = tl.load(INV + offs, mask=mask, other=1.0)
        tl.store(Q + offs, quantize.divide(x, s, inv), mask=mask)
        tl.store(WANT + offs, tl.math.div_rn(x, s), mask=mask)


def _divide_against_div_rn(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, s = x.float().contiguous(), s.float().contiguous()
    inv = torch.reciprocal(s)   # what quantize.reciprocal_of makes: correctly rounded float32
    q, want = torch.empty_like(x), torch.empty_like(x)
    block = 1024
    _divide_both[(triton.cdiv(x.numel(), block),)](x, s, inv, q, want, x.numel(), BLOCK=block)
    return q, want


def _bits_equal(q: torch.Tensor, want: torch.Tensor) -> None:
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(q), nan)
    same = q.view(torch.int32) == want.view(torch.int32)
    assert bool(same[~nan].all()), (q[~nan][~same[~nan]][:5], want[~nan][~same[~nan]][:5])


def _float16_values(dev: str) -> torch.Tensor:
    """Every float16 bit pattern but NaNs, as float32: all the numerators a float16 division takes."""
    v = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    return v[~torch.isnan(v)].float().to(dev)


def test_divide_matches_div_rn_on_every_float16_numerator():
    x = _float16_values(DEV)
    # Scales with and without a short mantissa, tiny and huge, a power of two, negative.
    for scale in (0.05, 1 / 3, 0.0078125, 7.1e-5, 3.0e-3, 113.7, -0.37, 6.0e-8):
        s = torch.tensor(scale, dtype=torch.float16).float().to(DEV).expand_as(x)
        _bits_equal(*_divide_against_div_rn(x, s))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the interpreter's numpy, on inf
def test_divide_zero_signs_infinities_and_random_float32():
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-30, -3e38, 1.0]),
                   torch.randn(20000, generator=g) * torch.exp2(torch.randint(-60, 60, (20000,), generator=g).float())])
    s = torch.cat([torch.tensor([0.5, 0.5, 0.02, 0.02, 0.3, 7e-3, 3.0]),
                   torch.rand(20000, generator=g) * torch.exp2(torch.randint(-30, 10, (20000,), generator=g).float()) + 1e-9])
    q, want = _divide_against_div_rn(x.to(DEV), s.to(DEV))
    _bits_equal(q, want)
    assert q[1].item() == 0.0 and torch.signbit(q[1]) and torch.isinf(q[2]) and q[3].item() < 0


def test_reciprocal_of_rounds_the_scale_to_the_division_type_first():
    s = torch.tensor([0.1, 3.3], dtype=torch.float32)
    assert torch.equal(quantize.reciprocal_of(s, torch.float16), torch.reciprocal(s.half().float()))
    assert quantize.reciprocal_of(s, torch.float16) is quantize.reciprocal_of(s, torch.float16)
    assert torch.equal(quantize.reciprocal_of(s), torch.reciprocal(s))


@pytest.mark.gpu
def test_gpu_divide_matches_div_rn_on_many_float16_and_float32_pairs():
    x16 = _float16_values("cuda")
    for scale in torch.rand(256, generator=torch.Generator().manual_seed(4)).mul(2.0).add(1e-4).half().tolist():
        _bits_equal(*_divide_against_div_rn(x16, torch.full_like(x16, scale)))
    g = torch.Generator(device="cuda").manual_seed(5)
    n = 1 << 24
    x = torch.randint(-2**31, 2**31 - 1, (n,), device="cuda", generator=g, dtype=torch.int32).view(torch.float32)
    s = torch.randint(0x00800000, 0x7F000000, (n,), device="cuda", generator=g, dtype=torch.int32).view(torch.float32)
    q, want = _divide_against_div_rn(x, s)
    # A quotient below the normal range or a numerator below 2**-100 may be an ulp off, and next
    # to the largest float the result may be inf (divide's docstring): each quantizes alike.
    inside = ((torch.abs(want) >= torch.finfo(torch.float32).tiny) & (torch.abs(want) < 2.0 ** 127)
              & (torch.abs(x) >= 2.0 ** -100)) | (want == 0)
    assert inside.float().mean() > 0.5
    _bits_equal(q[inside], want[inside])


# --- float8: the GPU's conversion (HW_FLOAT8) and float8e4m3_code give the same bits ----------------

if quantize is not None:
    @triton.jit
    def _float8_both(X, HW, SW, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(X + offs, mask=mask, other=0.0)
        tl.store(HW + offs, quantize.requantize(x, 0, False, True, 0, 0).to(tl.uint8), mask=mask)
        tl.store(SW + offs, quantize.float8e4m3_code(x).to(tl.uint8), mask=mask)


@pytest.mark.gpu
def test_gpu_float8_conversion_matches_the_bit_encoder_and_torch():
    assert quantize.HW_FLOAT8   # compiled: requantize takes the GPU conversion
    g = torch.Generator(device="cuda").manual_seed(6)
    n = 1 << 24
    # Every sign, exponent 2^-12..2^9 (subnormals, every binade, past 448) and random fractions,
    # plus each e4m3 value and the midpoints between neighbours (the ties).
    bits = torch.randint(0x39800000, 0x44000000, (n,), device="cuda", generator=g, dtype=torch.int32)
    x = (bits.view(torch.float32) * torch.where(torch.rand(n, device="cuda", generator=g) < 0.5, -1.0, 1.0))
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].sort().values
    # ... and past the range (the hardware conversion saturates by itself; the encoder is given
    # the clamped values, what requantize does in the interpreter).
    big = torch.tensor([448.0, 460.0, 464.0, 1e4, 3e38, float("inf")], device="cuda")
    x = torch.cat([x, grid.cuda(), ((grid[1:] + grid[:-1]) / 2).cuda(), big, -big])
    clamped = x.clamp(-448, 448)
    hw, sw = torch.empty(x.numel(), dtype=torch.uint8, device="cuda"), torch.empty(x.numel(), dtype=torch.uint8,
                                                                                    device="cuda")
    _float8_both[(triton.cdiv(x.numel(), 1024),)](x, hw, sw, x.numel(), BLOCK=1024)
    assert torch.equal(hw, clamped.to(torch.float8_e4m3fn).view(torch.uint8))
    _float8_both[(triton.cdiv(x.numel(), 1024),)](clamped, hw.clone(), sw, x.numel(), BLOCK=1024)
    assert torch.equal(hw, sw)


def test_all_zero_integer_zero_points_are_dropped_float8_ones_kept():
    zero8 = torch.zeros(1, dtype=torch.int8, device=DEV)
    assert quantize.needed_zero_point(zero8) is None and quantize.needed_zero_point(None) is None
    assert quantize.needed_zero_point(torch.zeros(4, dtype=torch.uint8, device=DEV)) is None
    three = torch.tensor([0, 3], dtype=torch.int8, device=DEV)
    assert quantize.needed_zero_point(three) is three
    f8 = torch.zeros(1, device=DEV).to(torch.float8_e4m3fn)   # v + 0 makes -0 into +0: kept
    assert quantize.needed_zero_point(f8) is f8
    # the same codes with the zero point as without, and the type it names (uint8 here) kept
    x = torch.randn(64, 33) * 40
    for zp in (torch.tensor(0, dtype=torch.uint8), torch.tensor(0, dtype=torch.int8)):
        got = _run(x, torch.tensor(0.5), zp)
        assert got.dtype == zp.dtype

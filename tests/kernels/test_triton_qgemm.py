"""The Triton quantized GEMM (kernels/triton/qgemm.py) against the reference kiln::QMatMul.

CPU: Triton's interpreter at small shapes with a 16x16x32 tile, so M, N and K cross tile
edges: int8/uint8 and float8_e4m3fn operands (the interpreter runs fp8 dots), per-tensor and
per-channel scales, zero points (the correction terms), bias/residual/activation, float and
requantized outputs, leading dims, both weight layouts. Agreement is the tuner's own rule
(compiler/tolerance.py with op kiln::QMatMul): float outputs within their dtype's tolerance,
8-bit outputs equal but for one step in a few elements; integer accumulation cases are also
checked to be exact where the epilogue cannot round differently. The same tests run compiled
with `pytest --device cuda` on a GPU (every tile here is one the GPU compiles: BLOCK_K >= 32);
the reference always runs on CPU, on CPU copies of every tensor. Requantized float8 cases use
float8 operands that are small integers, which any tensor-core float8 accumulator sums
exactly (Hopper's is narrower than float32), so they test the epilogue, not the accumulator.
GPU (marked): the real configs at BERT-like sizes."""
from __future__ import annotations

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available

REF = lookup("kiln::QMatMul").fn
OP = "kiln::QMatMul"
TINY = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
TINY_TMA = {**TINY, "TMA": 1}
TINY_PERSISTENT = {**TINY, "PERSISTENT": 1}
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"   # interpreted on CPU, compiled on the GPU

if triton_available():
    from kiln.kernels.triton import qgemm
    from kiln.kernels.triton import qgemm_space as space
    from kiln.kernels.triton import qgemm_tma
else:
    qgemm = None
pytestmark = pytest.mark.skipif(qgemm is None, reason="Triton is not installed")


def _ints(shape, dtype, g):
    lo, hi = (-128, 128) if dtype == torch.int8 else (0, 256)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int32).to(dtype)


def _fp8(shape, g, spread=40.0, ints=False):
    """float8 values: spread * N(0, 1) rounded to e4m3, or (ints) integers in [-4, 4], whose
    products (<= 16) sum exactly in any float8 MMA accumulator over 128 of them (< 2^11)."""
    if ints:
        return torch.randint(-4, 5, shape, generator=g).to(torch.float8_e4m3fn)
    return (torch.randn(shape, generator=g) * spread).to(torch.float8_e4m3fn)


def _layer(m, n, k, *, lead=(), a_dt=torch.int8, b_dt=torch.int8, trans_b=0, per_channel=True, a_zp=None,
           b_zp=None, bias=True, residual=False, scale_dtype=torch.float32, seed=0, dev=DEV, fp8_ints=False):
    """(args, kwargs) of one QMatMul: operands, scales about 1/(sqrt(K) * 64), a [N] bias."""
    g = torch.Generator().manual_seed(seed)
    fp8 = a_dt == torch.float8_e4m3fn
    a = _fp8((*lead, m, k), g, ints=fp8_ints) if fp8 else _ints((*lead, m, k), a_dt, g)
    b_shape = (n, k) if trans_b else (k, n)
    b = _fp8(b_shape, g, ints=fp8_ints) if fp8 else _ints(b_shape, b_dt, g)
    a_scale = torch.tensor(0.02 if fp8 else 1.0 / 64, dtype=scale_dtype)
    b_scale = (torch.rand(n, generator=g) + 0.5) / (max(k, 1) ** 0.5 * (0.15 if fp8_ints else 40 if fp8 else 64))
    if not per_channel:
        b_scale = b_scale[:1].clone()
    c = torch.randn(n, generator=g) if bias else None
    r = torch.randn(*lead, m, n, generator=g).to(scale_dtype) if residual else None
    args = [a, b, a_scale, a_zp, b_scale, b_zp, c, r]
    return [None if t is None else t.to(dev) for t in args]


def _cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


def _check(args, **attrs):
    got = qgemm.qmatmul(*args, config=attrs.pop("config", TINY), **attrs)
    want = REF(*[_cpu(t) for t in args], **{name: _cpu(v) for name, v in attrs.items()})   # all on CPU
    assert got.dtype == want.dtype and got.shape == want.shape
    why = mismatch(got.cpu(), want, OP)
    assert why is None, why
    return got.cpu(), want


def _requant(out_type, zp=None, scale=0.05, dev=DEV):
    onnx = {torch.int8: TensorProto.INT8, torch.uint8: TensorProto.UINT8,
            torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN}[out_type]
    zp_t = None if zp is None else torch.tensor(zp, dtype=out_type, device=dev)
    return dict(out_scale=torch.tensor(scale, device=dev), out_zp=zp_t, out_dtype=onnx)


# --- int8 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_int8_float_output_scales_and_layouts(per_channel, trans_b):
    args = _layer(37, 40, 80, trans_b=trans_b, per_channel=per_channel)
    got, want = _check(args, trans_b=trans_b)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("config", [TINY, TINY_TMA, TINY_PERSISTENT], ids=["tile", "tma", "persistent"])
@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
def test_a_classifier_head_of_odd_width(fp8, config):
    """N = 100 (as a 1000-class head: no multiple of 16): the last column tile masked, every walk."""
    if fp8 and DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    dt = torch.float8_e4m3fn if fp8 else torch.int8
    args = _layer(8, 100, 64, a_dt=dt, b_dt=dt, trans_b=1, scale_dtype=torch.float16, seed=21)
    got, _ = _check(args, trans_b=1, config={**config, **({"FP8_ACC": 32} if fp8 else {})})
    assert got.shape == (8, 100)


def test_int8_leading_dims_residual_and_each_output_float_type():
    for dt in (torch.float16, torch.bfloat16):
        args = _layer(9, 32, 64, lead=(2, 3), residual=True, scale_dtype=dt, seed=1)
        got, _ = _check(args, activation="Relu")
        assert got.shape == (2, 3, 9, 32) and got.dtype == dt


@pytest.mark.parametrize("act, params", [("Relu", []), ("Gelu", [0.0]), ("Gelu", [1.0]), ("Sigmoid", []),
                                         ("Tanh", []), ("LeakyRelu", [0.2])])
def test_int8_activations(act, params):
    args = _layer(20, 16, 32, residual=True, seed=2)
    _check(args, activation=act, activation_params=params)


@pytest.mark.parametrize("out_type, zp", [(torch.int8, 3), (torch.uint8, 100), (torch.int8, None),
                                          (torch.float8_e4m3fn, None)])
def test_int8_requantized_outputs(out_type, zp):
    args = _layer(37, 40, 80, residual=True, seed=3)
    got, want = _check(args, activation="Gelu", **_requant(out_type, zp))
    assert got.dtype == out_type
    assert want.float().unique().numel() > 20          # spread over the range, not saturated
    # The default requantized type is uint8 (no out_dtype, no out_zp), as QuantizeLinear's.
    if out_type == torch.int8 and zp is None:
        plain = dict(out_scale=torch.tensor(0.05, device=DEV))
        got, _ = _check(args, activation="Gelu", **plain)
        assert got.dtype == torch.uint8


@pytest.mark.parametrize("a_dt, out_type, zp", [(torch.int8, torch.int8, True), (torch.int8, torch.uint8, True),
                                                 (torch.float8_e4m3fn, torch.float8_e4m3fn, False)])
def test_per_column_output_scales(a_dt, out_type, zp):
    """out_scale (and out_zp) per output column: SmoothQuant's per-channel activation scales of
    the next layer's input, requantized by this one."""
    fp8 = a_dt == torch.float8_e4m3fn
    args = _layer(37, 40, 80, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, seed=16, fp8_ints=fp8)
    g = torch.Generator().manual_seed(17)
    onnx = {torch.int8: TensorProto.INT8, torch.uint8: TensorProto.UINT8,
            torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN}[out_type]
    out_scale = (torch.rand(40, generator=g) * 0.1 + 0.01).to(DEV)
    out_zp = None
    if zp:
        lo, hi = (-10, 10) if out_type == torch.int8 else (100, 150)
        out_zp = torch.randint(lo, hi, (40,), generator=g).to(out_type).to(DEV)
    for cfg in (TINY, TINY_TMA):
        got, want = _check(args, trans_b=1, activation="Relu", out_scale=out_scale, out_zp=out_zp, out_dtype=onnx,
                           config=cfg)
        assert got.dtype == out_type and want.float().unique().numel() > 20


def test_requantization_saturates_and_rounds_ties_to_even():
    # One-hot rows: acc = b[k, n] exactly, and scales that are powers of two make every value
    # exact in float32 too, so ties (x.5) must round to even and the ends must saturate.
    k, n = 32, 16
    a = torch.zeros(16, k, dtype=torch.int8)
    a[torch.arange(16), torch.arange(16)] = 1                       # Y = B[:16] * scale
    b = ((torch.arange(k * n) % 256) - 128).reshape(k, n).to(torch.int8)   # rows 0..15: -128..127
    args = [a, b, torch.tensor(1.0), None, torch.tensor(0.5), None, None, None]
    args = [None if t is None else t.to(DEV) for t in args]
    for out_type, zp in ((torch.int8, 0), (torch.uint8, 128)):
        got, want = _check(args, **_requant(out_type, zp, scale=1.0))
        assert torch.equal(got, want)                  # exact: no float32 rounding anywhere
    got, want = _check(args, **_requant(torch.int8, 0, scale=1.0 / 8))   # 8 * b / 2 saturates
    assert torch.equal(got, want) and int(got.max()) == 127 and int(got.min()) == -128
    # float8, bit for bit. Scale 2^9: Y = b / 2^10 puts |b| < 16 on the subnormal grid (steps
    # of 2^-9, a tie at every odd b), larger b between normal neighbours with ties (b = 17:
    # 8.5 steps of 2^-9 -> 2^-6), b = -1 on -0; with a zero point of 0.5 the same shifted;
    # scale 1/8: Y = 4 b saturates at +-448.
    for scale, zp in ((2.0 ** 9, None), (2.0 ** 9, 0.5), (0.125, None)):
        req = _requant(torch.float8_e4m3fn, None, scale=scale)
        if zp is not None:
            req["out_zp"] = torch.tensor(zp).to(torch.float8_e4m3fn).to(DEV)
        got, want = _check(args, **req)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))    # -0 and +0 included
    assert float(want.float().max()) == 448.0 and float(want.float().min()) == -448.0


# --- zero points and uint8 ---------------------------------------------------------------------

@pytest.mark.parametrize("a_dt, b_dt", [(torch.int8, torch.int8), (torch.uint8, torch.int8),
                                        (torch.int8, torch.uint8), (torch.uint8, torch.uint8)])
def test_zero_points_and_uint8_operands(a_dt, b_dt):
    g = torch.Generator().manual_seed(4)
    n = 24
    a_zp = torch.tensor(-5 if a_dt == torch.int8 else 131, dtype=a_dt)
    b_zp = _ints((n,), b_dt, g)
    args = _layer(21, n, 48, a_dt=a_dt, b_dt=b_dt, a_zp=a_zp.to(DEV), b_zp=b_zp.to(DEV), seed=5)
    _check(args)
    # Unit scales, no bias, float32 out: Y is the integer sum itself (|sum| < 2^24, exact in
    # float32), so the zero-point corrections must be exact to the unit.
    args[2], args[4], args[6] = torch.ones((), device=DEV), torch.ones(n, device=DEV), None
    got, want = _check(args)
    assert torch.equal(got, want)


def test_uint8_without_zero_points_and_zero_zero_points():
    # uint8 with no zero point still needs the 128-shift correction; an all-zero zero point is
    # the symmetric case, whose correction loops are skipped at run time.
    for a_dt, a_zp in ((torch.uint8, None), (torch.int8, torch.tensor(0, dtype=torch.int8))):
        args = _layer(18, 16, 64, a_dt=a_dt, b_dt=torch.uint8, a_zp=None if a_zp is None else a_zp.to(DEV),
                      b_zp=torch.zeros(16, dtype=torch.uint8, device=DEV), seed=6)
        _check(args)


# --- float8 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("trans_b, per_channel", [(1, True), (0, False)])
def test_fp8_float_outputs(trans_b, per_channel):
    for dt in (torch.float32, torch.float16):
        args = _layer(37, 40, 80, a_dt=torch.float8_e4m3fn, b_dt=torch.float8_e4m3fn, trans_b=trans_b,
                      per_channel=per_channel, residual=True, scale_dtype=dt, seed=7)
        _check(args, trans_b=trans_b, activation="Gelu", activation_params=[1.0])


def test_fp8_requantized_outputs():
    args = _layer(20, 32, 64, a_dt=torch.float8_e4m3fn, b_dt=torch.float8_e4m3fn, seed=8, fp8_ints=True,
                  residual=True)
    for out_type, zp in ((torch.float8_e4m3fn, None), (torch.int8, None), (torch.uint8, 128)):
        got, want = _check(args, activation="Relu", **_requant(out_type, zp, scale=0.02))
        assert got.dtype == out_type and want.float().unique().numel() > 20


# --- edges and refusals --------------------------------------------------------------------------

def test_empty_m_and_empty_k():
    args = _layer(0, 16, 32)
    got = qgemm.qmatmul(*args, config=TINY)
    assert got.shape == (0, 16)
    args = _layer(5, 16, 0, residual=True)    # K = 0: the epilogue alone (bias + residual)
    got, _ = _check(args)
    torch.testing.assert_close(got, (args[6] + args[7]).cpu())


def test_launcher_refusals():
    args = _layer(4, 16, 32)
    with pytest.raises(AssertionError, match="both be int8/uint8 or both float8"):
        qgemm.qmatmul(args[0], args[1].to(torch.float8_e4m3fn), *args[2:], config=TINY)
    with pytest.raises(AssertionError, match="requantizes to"):
        qgemm.qmatmul(*args, out_scale=torch.tensor(1.0, device=DEV), out_dtype=TensorProto.INT4, config=TINY)
    with pytest.raises(AssertionError, match="b_scale must have one element or shape"):
        qgemm.qmatmul(args[0], args[1], args[2], None, torch.ones(3, device=DEV), config=TINY)
    fp = _layer(4, 16, 32, a_dt=torch.float8_e4m3fn, b_dt=torch.float8_e4m3fn)
    with pytest.raises(AssertionError, match="no zero point"):
        qgemm.qmatmul(fp[0], fp[1], fp[2], torch.zeros((), device=DEV), fp[4], config=TINY)
    # A 16-deep K tile runs in the interpreter but no 8-bit dot compiles with it on the GPU.
    with pytest.raises(AssertionError, match="BLOCK_K >= 32"):
        qgemm.qmatmul(*args, config={**TINY, "BLOCK_K": 16})


def test_every_config_is_one_the_gpu_compiles():
    assert space.CONFIGS == space.INT8_CONFIGS + space.FP8_CONFIGS
    assert all(c["BLOCK_K"] >= space.MIN_BLOCK_K and c["BLOCK_M"] >= 16 and c["BLOCK_N"] >= 16
               for c in space.CONFIGS)
    for c in space.CONFIGS:   # pipelined operands fit an H100/H200 block's shared memory
        assert (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * c["num_stages"] <= 227 * 1024
    for c in (c for c in space.CONFIGS if c.get("SM_PROGRAMS", 1) > 1):   # two fit an SM: stages, 8-bit Y box
        assert c["PERSISTENT"] and 2 * qgemm_tma.staged_bytes(c, 1, 1) <= 227 * 1024
    assert any(c.get("SM_PROGRAMS") == 2 for c in space.FP8_CONFIGS)
    assert all("FP8_ACC" not in c for c in space.INT8_CONFIGS)
    assert all("FP8_ACC" in c for c in space.FP8_CONFIGS) and space.FP8_CONFIGS[0]["FP8_ACC"] > 0
    assert space.fp8_promotion({"BLOCK_K": 64, "FP8_ACC": 128}) == 64
    assert space.fp8_promotion({"BLOCK_K": 128}) == 128 and space.fp8_promotion({"BLOCK_K": 64, "FP8_ACC": 0}) == 0
    # The convolution's walk may step K by less than BLOCK_K: the dot's own K bounds FP8_ACC.
    assert space.fp8_promotion({"BLOCK_K": 128, "FP8_ACC": 128}, 64) == 64


@pytest.mark.parametrize("config", [TINY, TINY_TMA])
def test_all_zero_zero_points_give_the_same_codes_as_none(config):
    # kiln's int8 quantizer writes int8 zero points of 0; the launcher drops them (no correction
    # sums, no zero-point registers, TMA allowed) and the codes must not change.
    z8 = lambda: torch.zeros(1, dtype=torch.int8, device=DEV)   # noqa: E731
    args = _layer(40, 48, 64, trans_b=1, a_zp=z8(), b_zp=torch.zeros(48, dtype=torch.int8, device=DEV))
    plain = [*args[:3], None, args[4], None, *args[6:]]
    req = dict(trans_b=1, activation="Gelu", config=dict(config), **_requant(torch.int8, 0))
    with_zp, _ = _check(args, **req)
    without, _ = _check(plain, **{**req, "out_zp": None})
    assert torch.equal(with_zp, without)
    uint8 = _requant(torch.uint8, 0)          # a zero point of 0 still names uint8 as the output type
    assert qgemm.qmatmul(*args, trans_b=1, config=dict(TINY), **uint8).dtype == torch.uint8


def test_fp8_unpromoted_accumulation_matches_on_small_integers():
    # FP8_ACC 0 (the MMA accumulates throughout) in the interpreter: the same arithmetic path
    # and epilogue, exact where the sums are small integers.
    args = _layer(20, 32, 64, a_dt=torch.float8_e4m3fn, b_dt=torch.float8_e4m3fn, seed=9, fp8_ints=True)
    for cfg in ({**TINY, "FP8_ACC": 0}, {**TINY, "FP8_ACC": 32}):
        _check(args, activation="Relu", config=cfg)


# --- GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("m, n, k", [(4096, 768, 768), (4096, 3072, 768), (1000, 768, 3072)])
@pytest.mark.parametrize("a_dt", [torch.int8, torch.float8_e4m3fn])
def test_gpu_bert_sizes_every_config(m, n, k, a_dt):
    if a_dt == torch.float8_e4m3fn and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 dots need compute capability 8.9+")
    fp8 = a_dt == torch.float8_e4m3fn
    args = _layer(m, n, k, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, scale_dtype=torch.float16,
                  dev="cuda")
    # Requantized outputs: float8 operands of small integers, which Hopper's float8 accumulator
    # (narrower than float32) sums exactly, so the one-step rule tests the epilogue alone.
    exact = _layer(m, n, k, a_dt=a_dt, b_dt=a_dt, trans_b=1, residual=True, scale_dtype=torch.float16,
                   dev="cuda", fp8_ints=True) if fp8 else args
    outputs = [(torch.int8, 0), (torch.float8_e4m3fn, None)]
    for cfg in space.FP8_CONFIGS if fp8 else space.INT8_CONFIGS:
        # Unpromoted fp8 accumulation (FP8_ACC 0) is exact on small integers only: the tuner
        # judges it on real data by the tolerance; here it gets the exact operands.
        _check(exact if cfg.get("FP8_ACC") == 0 else args, trans_b=1, activation="Gelu", config=dict(cfg))
        for out_type, zp in outputs:
            _check(exact, trans_b=1, config=dict(cfg), **_requant(out_type, zp, scale=0.05, dev="cuda"))
        if fp8:   # a Gelu into float8 codes: FAST_GELU configs take the hardware tanh there
            _check(exact, trans_b=1, activation="Gelu", config=dict(cfg),
                   **_requant(torch.float8_e4m3fn, None, scale=0.05, dev="cuda"))


@pytest.mark.gpu
def test_gpu_uint8_zero_points_and_a_k_tail_every_config():
    # K = 720: a masked last K step under every config (64- and 128-deep), where the uint8
    # operands' masked lanes must count as 0 after the shift; unit scales and float32 output
    # make Y the integer sum, exact.
    g = torch.Generator().manual_seed(11)
    m, n, k = 300, 256, 720
    args = _layer(m, n, k, a_dt=torch.uint8, b_dt=torch.uint8, trans_b=1, bias=False, dev="cuda",
                  a_zp=torch.tensor(131, dtype=torch.uint8, device="cuda"), b_zp=_ints((n,), torch.uint8, g).cuda())
    args[2], args[4] = torch.ones((), device="cuda"), torch.ones(n, device="cuda")
    for cfg in space.CONFIGS:
        got, want = _check(args, trans_b=1, config=dict(cfg))
        assert torch.equal(got, want), cfg


def test_reciprocal_of_out_scale_is_memoised_and_correctly_rounded():
    s = torch.tensor([0.05, 3.0, 1e-3, 7.1e-5], dtype=torch.float32)
    inv = qgemm.reciprocal_of(s)
    assert qgemm.reciprocal_of(s) is inv                                   # one division per scale tensor
    want = (1.0 / s.double()).float()                                      # float64 then float32: no tie here
    assert inv.dtype == torch.float32 and torch.equal(inv, want)
    s.mul_(2.0)                                                            # an in-place change recomputes
    assert torch.equal(qgemm.reciprocal_of(s), (1.0 / s.double()).float())
    half = torch.tensor(0.02, dtype=torch.float16)
    assert qgemm.reciprocal_of(half).dtype == torch.float32


def test_describe_names_a_config_as_the_reports_print_it():
    assert space.describe(space.INT8_CONFIGS[0]) == "128x128x128 w4 s4"
    cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4,
           "FP8_ACC": 0, "PERSISTENT": 1}
    assert space.describe(cfg) == "128x128x64 w4 s4 FP8_ACC=0 PERSISTENT=1"


@pytest.mark.parametrize("config", [TINY, TINY_TMA, TINY_PERSISTENT], ids=["pointers", "tma", "persistent"])
@pytest.mark.parametrize("mid_type, mid_zp", [(torch.uint8, 131), (torch.int8, -3), (torch.uint8, None)])
def test_mid_quantization_before_the_bias(config, mid_type, mid_zp):
    """mid_scale / mid_zp (ONNX Runtime's MatMul -> Q -> DQ -> Add(bias) -> Q as one layer): the
    product rounded to its own codes (ties to even, saturated) and back before the bias. Exact
    operands (power-of-two scales, integer bias) make every step exact, so the codes equal the
    reference's bit for bit; the mid rounding makes a difference."""
    g = torch.Generator().manual_seed(11)
    a, b = _ints((24, 64), torch.int8, g), _ints((64, 40), torch.int8, g)
    bias = torch.randint(-64, 64, (40,), generator=g).float()
    ops = [t.to(DEV) for t in (a, b, torch.tensor(2.0 ** -6), torch.tensor(2.0 ** -7), bias)]
    mid = dict(mid_scale=torch.tensor(0.5, device=DEV),
               mid_zp=None if mid_zp is None else torch.tensor(mid_zp, dtype=mid_type, device=DEV))
    args = [ops[0], ops[1], ops[2], None, ops[3], None, ops[4], None]
    out = _requant(torch.uint8, 7, scale=0.25)
    got = qgemm.qmatmul(*args, config=config, **out, **mid).cpu()
    want = REF(*[_cpu(t) for t in args], **{k: _cpu(v) for k, v in {**out, **mid}.items()})
    plain = REF(*[_cpu(t) for t in args], **{k: _cpu(v) for k, v in out.items()})
    assert torch.equal(got, want) and not torch.equal(want, plain)


@pytest.mark.parametrize("config", [TINY, TINY_PERSISTENT], ids=["pointers", "persistent"])
@pytest.mark.parametrize("mid_type", [torch.uint8, torch.int8])
def test_mid_quantization_per_column(config, mid_type):
    """Merged projections (merge_parallel_matmuls over ONNX Runtime's Q/K/V) keep each member's mid
    scale and zero point: one per column, here three members' worth. Exact operands as above; each
    column's codes equal the reference's, and equal the per-tensor layer of its member's scale."""
    g = torch.Generator().manual_seed(12)
    a, b = _ints((24, 64), torch.int8, g), _ints((64, 48), torch.int8, g)
    bias = torch.randint(-64, 64, (48,), generator=g).float()
    ops = [t.to(DEV) for t in (a, b, torch.tensor(2.0 ** -6), torch.tensor(2.0 ** -7), bias)]
    scales, zps = (0.5, 0.25, 1.0), ((131, 120, 128) if mid_type == torch.uint8 else (-3, 5, 0))
    ms = torch.tensor(scales).repeat_interleave(16)
    mz = torch.tensor(zps).repeat_interleave(16).to(mid_type)
    args = [ops[0], ops[1], ops[2], None, ops[3], None, ops[4], None]
    out = _requant(torch.uint8, 7, scale=0.25)
    got = qgemm.qmatmul(*args, config=config, **out, mid_scale=ms.to(DEV), mid_zp=mz.to(DEV)).cpu()
    out_cpu = {k: _cpu(v) for k, v in out.items()}
    want = REF(*[_cpu(t) for t in args], **out_cpu, mid_scale=ms, mid_zp=mz)
    assert torch.equal(got, want)
    for i, (s, z) in enumerate(zip(scales, zps)):
        one = REF(*[_cpu(t) for t in args], **out_cpu, mid_scale=torch.tensor(s), mid_zp=torch.tensor(z, dtype=mid_type))
        assert torch.equal(want[:, 16 * i:16 * (i + 1)], one[:, 16 * i:16 * (i + 1)])

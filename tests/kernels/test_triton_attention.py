"""The Triton kiln::Attention (kernels/triton/attention.py) against the reference (fused.attention).

CPU: Triton's interpreter on small shapes; the same tests run compiled with `pytest --device cuda`
(the reference on CPU in float32). Every input type, masks (none, boolean, additive, broadcast
from [Lq, Lk] or [B, 1, 1, Lk]), causal, Lq != Lk, head dims that are not powers of two, rows
with every key masked (NaN, as the reference), ranks 3 to 5, every tuning config; the tactic's
support rules. bfloat16 runs compiled only (the interpreter's bfloat16 dot is wrong). GPU
(marked): BERT-base's shape. Tests marked both_kernels run the streaming kernel and the one-tile
kernel (config ONE_TILE: every key in one tile)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available
from kiln.tactics.registry import TacticQuery, get_tactic

REF = lookup("kiln::Attention").fn
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}
SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 2}
SMALL_ONE_TILE = {"ONE_TILE": 1, "BLOCK_M": 16, "num_warps": 4}
KERNEL = {"config": SMALL}     # the config _check runs by default (the kernel fixture switches it)

if triton_available():
    from kiln.kernels.triton import attention as ta
else:
    ta = None
pytestmark = [pytest.mark.skipif(ta is None, reason="Triton is not installed"),
              # the interpreter's numpy on rows with no key (0 / 0)
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


@pytest.fixture(params=["stream", "one_tile"])
def kernel(request):
    KERNEL["config"] = SMALL if request.param == "stream" else SMALL_ONE_TILE
    yield KERNEL["config"]
    KERNEL["config"] = SMALL


both_kernels = pytest.mark.usefixtures("kernel")


def _qkv(shape_q, lk, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    *lead, lq, d = shape_q
    q = torch.randn(*lead, lq, d, generator=g)
    k = torch.randn(*lead, lk, d, generator=g)
    v = torch.randn(*lead, lk, d, generator=g)
    return [t.to(dtype) for t in (q, k, v)]


def _check(q, k, v, mask=None, config=None, **attrs):
    dev = [t.to(DEV) for t in (q, k, v)]
    got = ta.attention(*dev, None if mask is None else mask.to(DEV), config=config or KERNEL["config"], **attrs).cpu()
    want = REF(q.float(), k.float(), v.float(), None if mask is None else mask, **attrs)
    assert got.dtype == q.dtype and got.shape == q.shape
    rtol, atol = TOL[q.dtype]
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    torch.testing.assert_close(got.float()[~nan], want[~nan], rtol=rtol, atol=atol)
    return got


@both_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_type_plain_and_scaled(dtype):
    if dtype == torch.bfloat16 and not HAS_CUDA:
        pytest.skip("the interpreter's bfloat16 dot is wrong (test_matmul_tactics.py): bfloat16 on the GPU only")
    q, k, v = _qkv((2, 3, 37, 32), 45, dtype)
    _check(q, k, v)
    _check(q, k, v, scale=0.3)


@both_kernels
def test_masks_boolean_additive_and_broadcast():
    q, k, v = _qkv((2, 2, 20, 16), 24, torch.float16)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(20, 24, generator=g) > 0.3
    keep[:, 0] = True                                        # every row keeps a key
    _check(q, k, v, keep)                                    # [Lq, Lk], boolean
    pad = torch.zeros(2, 1, 1, 24)
    pad[1, ..., 17:] = -3.4e38                               # BERT's padding mask, batch 1 padded
    _check(q, k, v, pad)
    _check(q, k, v, torch.randn(2, 2, 20, 24, generator=g))  # a full additive mask
    _check(q, k, v, pad.half())


@both_kernels
def test_causal_top_left_and_with_a_mask():
    q, k, v = _qkv((1, 2, 33, 16), 33, torch.float32)
    _check(q, k, v, is_causal=1)
    q, k, v = _qkv((1, 2, 20, 16), 30, torch.float32)       # Lq < Lk: top-left aligned as torch
    _check(q, k, v, is_causal=1)
    keep = torch.ones(20, 30, dtype=torch.bool)
    keep[:, 1] = False
    _check(q, k, v, keep, is_causal=1)


@both_kernels
def test_rows_with_no_key_are_nan_like_the_reference():
    q, k, v = _qkv((1, 1, 8, 16), 16, torch.float32)
    keep = torch.ones(8, 16, dtype=torch.bool)
    keep[3] = False
    got = _check(q, k, v, keep)
    assert torch.isnan(got[0, 0, 3]).all() and not torch.isnan(got[0, 0, 2]).any()


@both_kernels
def test_rows_padded_everywhere_by_float32_min_average_like_the_reference():
    # HF's padding mask in an fp32 engine adds finfo(float32).min; a sequence with no valid
    # token has it at every key: the reference's softmax is uniform there (no -inf anywhere)
    q, k, v = _qkv((2, 2, 12, 16), 12, torch.float32)
    pad = torch.zeros(2, 1, 1, 12)
    pad[1] = torch.finfo(torch.float32).min
    got = _check(q, k, v, pad)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[1], v[1].mean(dim=-2, keepdim=True).expand(2, 12, 16), rtol=1e-4, atol=1e-5)


@both_kernels
@pytest.mark.parametrize("d", [8, 40, 64, 80])
def test_head_dims(d):
    _check(*_qkv((2, 1, 19, d), 21, torch.float16))


@both_kernels
@pytest.mark.parametrize("shape", [(5, 17, 16), (2, 2, 3, 9, 16)])
def test_other_ranks(shape):
    q, k, v = _qkv(shape, 11, torch.float32)
    _check(q, k, v)
    keep = torch.rand(*shape[:-2], 1, 11, generator=torch.Generator().manual_seed(2)) > 0.2
    keep[..., 0] = True
    _check(q, k, v, keep)


@both_kernels
def test_strided_views_in_and_sdpa_layout_out():
    # BERT's Q/K/V: one [B, S, 3, H, D] GEMM output, each a transposed view [B, H, S, D]; read in
    # place. Y is [B, H, S, D] stored as [B, S, H, D], so Transpose(0, 2, 1, 3) is contiguous.
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 24, 3, 2, 16, generator=g).half()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    got = _check(q, k, v)
    y = ta.attention(q.to(DEV), k.to(DEV), v.to(DEV), config=KERNEL["config"])
    assert y.transpose(1, 2).is_contiguous()
    assert torch.equal(y.cpu(), got)


@pytest.mark.parametrize("config", ta.CONFIGS + ta.ONE_TILE_CONFIGS if ta is not None else [])
def test_every_config(config):
    q, k, v = _qkv((1, 2, 70, 32), 70, torch.float16)
    _check(q, k, v, torch.zeros(1, 1, 1, 70), config=dict(config))


def test_empty_and_refusals():
    q, k, v = _qkv((1, 1, 0, 16), 4, torch.float32)
    assert ta.attention(q.to(DEV), k.to(DEV), v.to(DEV)).shape == (1, 1, 0, 16)
    q, k, v = _qkv((1, 1, 4, 16), 0, torch.float32)            # no keys: zeros, as the reference
    assert torch.equal(ta.attention(q.to(DEV), k.to(DEV), v.to(DEV)).cpu(), REF(q, k, v))
    q, k, v = _qkv((1, 1, 4, 16), 4, torch.float32)
    with pytest.raises(AssertionError, match="share a float type"):
        ta.attention(q.to(DEV), k.half().to(DEV), v.to(DEV))
    with pytest.raises(AssertionError, match="head dim"):
        z = torch.zeros(1, 1, 4, 300, device=DEV)
        ta.attention(z, z, z)


def test_tactic_support_rules():
    tactic = get_tactic("kiln::Attention.triton")
    ok = TacticQuery("kiln::Attention", "cuda", ("float16",) * 3, {}, ((32, 12, 128, 64),) * 3)
    assert tactic.supports(ok)
    with_mask = TacticQuery("kiln::Attention", "cuda", ("float16",) * 3 + ("bool",), {},
                            ((32, 12, 128, 64),) * 3 + ((32, 1, 1, 128),))
    assert tactic.supports(with_mask)
    broadcast_kv = TacticQuery("kiln::Attention", "cuda", ("float16",) * 3, {},
                               ((32, 12, 128, 64), (32, 1, 128, 64), (32, 1, 128, 64)))
    assert not tactic.supports(broadcast_kv)          # K/V leading dims must match Q's
    wide = TacticQuery("kiln::Attention", "cuda", ("float16",) * 3, {}, ((1, 1, 8, 512),) * 3)
    assert not tactic.supports(wide)
    mixed = TacticQuery("kiln::Attention", "cuda", ("float16", "float32", "float16"), {}, ((1, 1, 8, 64),) * 3)
    assert not tactic.supports(mixed)


def test_one_tile_support_rules_and_refusal():
    """The one-tile tactic: the Triton kernel's rules and at most MAX_ONE_TILE_KEYS keys, known or
    bounded by the profiles."""
    tactic = get_tactic("kiln::Attention.triton_one_tile")

    def query(lk):
        return TacticQuery("kiln::Attention", "cuda", ("float16",) * 3, {}, ((32, 12, 128, 64),) + ((32, 12, lk, 64),) * 2)

    assert tactic.supports(query(128)) and tactic.supports(query(197)) and tactic.supports(query(ta.MAX_ONE_TILE_KEYS))
    assert not tactic.supports(query(ta.MAX_ONE_TILE_KEYS + 1)) and not tactic.supports(query("seq"))
    # a dynamic sequence whose profiles keep it within one tile (TacticQuery.dim_max)
    bounded = lambda most: TacticQuery("kiln::Attention", "cuda", ("float16",) * 3, {},  # noqa: E731
                                       (("b", 12, "seq", 64),) * 3, dim_max={"seq": most})
    assert tactic.supports(bounded(128)) and not tactic.supports(bounded(ta.MAX_ONE_TILE_KEYS + 1))
    mixed = TacticQuery("kiln::Attention", "cuda", ("float16", "float32", "float16"), {}, ((1, 1, 8, 64),) * 3)
    assert not tactic.supports(mixed)
    z = torch.zeros(1, 1, ta.MAX_ONE_TILE_KEYS + 1, 16, device=DEV)
    with pytest.raises(AssertionError, match="ONE_TILE takes up to"):
        ta.attention(z, z, z, config=SMALL_ONE_TILE)


@pytest.mark.gpu
def test_gpu_bert_base_shape_every_config():
    q, k, v = _qkv((32, 12, 128, 64), 128, torch.float16)
    pad = torch.zeros(32, 1, 1, 128)
    pad[::3, ..., 100:] = -3.4e38
    for config in ta.CONFIGS + ta.ONE_TILE_CONFIGS:
        _check(q, k, v, pad, config=dict(config))


def _check_requantized(q, k, v, mask, out_dtype, zp, config=None):
    """The requantized output against the reference's, judged by the tuner's rule for it."""
    from kiln.compiler.tolerance import mismatch
    types = {3: torch.int8, 2: torch.uint8, 17: torch.float8_e4m3fn}
    scale = torch.tensor(0.02)
    zp_t = None if zp is None else torch.tensor(zp, dtype=types[out_dtype])
    dev = [t.to(DEV) for t in (q, k, v)]
    got = ta.attention(*dev, mask.to(DEV), scale.to(DEV), None if zp_t is None else zp_t.to(DEV),
                       out_dtype=out_dtype, config=config or KERNEL["config"]).cpu()
    want = REF(q.float(), k.float(), v.float(), mask, scale, zp_t, out_dtype=out_dtype)
    assert got.dtype == types[out_dtype] and got.shape == q.shape
    assert int((got.view(torch.uint8) != want.view(torch.uint8)).sum()) < got.numel() // 10
    assert mismatch(got, want, "kiln::Attention") is None
    return got


@both_kernels
@pytest.mark.parametrize("out_dtype, zp", [(3, 0), (3, -5), (2, 128), (17, None)], ids=["int8", "int8zp", "uint8", "fp8"])
def test_requantized_output(out_dtype, zp):
    """out_scale (and out_zp, out_dtype): Y rounded to 8 bits in the store, in the [B, S, H, D]
    memory layout of the float output (the Transpose after attention stays a view)."""
    q, k, v = _qkv((2, 2, 37, 32), 45, torch.float16, seed=2)
    mask = torch.zeros(2, 1, 1, 45)
    mask[1, ..., 30:] = -1e4
    got = _check_requantized(q, k, v, mask, out_dtype, zp)
    assert got.transpose(1, 2).is_contiguous()


@both_kernels
@pytest.mark.parametrize("out_dtype", [3, 17], ids=["int8", "fp8"])
def test_requantized_per_head_channel(out_dtype):
    """H*D scales (and zero points): channel h*D + d, SmoothQuant's scales of [B, S, H*D]."""
    from kiln.compiler.tolerance import mismatch
    q, k, v = _qkv((2, 3, 20, 16), 24, torch.float16, seed=4)
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(48, generator=g) * 0.02 + 0.005
    zp = torch.zeros(48, dtype=torch.int8) if out_dtype == 3 else None
    got = ta.attention(q.to(DEV), k.to(DEV), v.to(DEV), None, scale.to(DEV), None if zp is None else zp.to(DEV),
                       out_dtype=out_dtype, config=KERNEL["config"]).cpu()
    want = REF(q.float(), k.float(), v.float(), None, scale, zp, out_dtype=out_dtype)
    assert mismatch(got, want, "kiln::Attention") is None
    assert int((got.view(torch.uint8) != want.view(torch.uint8)).sum()) < got.numel() // 10


def test_requantized_output_without_keys_is_the_zero_point():
    q, k, v = _qkv((1, 1, 4, 16), 0, torch.float16)
    zp = torch.tensor(-3, dtype=torch.int8)
    y = ta.attention(q.to(DEV), k.to(DEV), v.to(DEV), None, torch.tensor(0.1, device=DEV), zp.to(DEV), out_dtype=3)
    assert y.dtype == torch.int8 and bool((y.cpu() == -3).all())


def test_requantized_tactic_support():
    from kiln.tactics.attention import _supports
    tactic = get_tactic("kiln::Attention.triton")
    shapes = ((32, 12, 128, 64),) * 3 + (None, (), ())

    def query(out_scale="float32", zp="int8", out_dtype=3, scale_shape=()):
        dts = ("float16",) * 3 + (None, out_scale, zp)
        return TacticQuery("kiln::Attention", "cuda", dts, {"out_dtype": out_dtype},
                           shapes[:4] + (scale_shape, ()))

    assert _supports(query()) == tactic.supports(query())
    assert not _supports(query(scale_shape=(2,)))                  # per tensor or per head channel only
    assert _supports(query(scale_shape=(768,), zp=None))           # H*D = 12 * 64: SmoothQuant's
    assert not _supports(query(zp="uint8"))                        # zero point of another type
    assert not _supports(query(out_dtype=6))                       # INT32: not an 8-bit type
    assert not _supports(query(out_dtype=999))                     # not an ONNX type kiln knows


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [3, 17], ids=["int8", "fp8"])
def test_gpu_bert_base_shape_requantized_every_config(out_dtype):
    q, k, v = _qkv((32, 12, 128, 64), 128, torch.float16)
    pad = torch.zeros(32, 1, 1, 128)
    pad[::3, ..., 100:] = -3.4e38
    for config in ta.CONFIGS + ta.ONE_TILE_CONFIGS:
        _check_requantized(q, k, v, pad, out_dtype, 0 if out_dtype == 3 else None, config=dict(config))


def _codes(shape_q, lk, seed=5, kind="fp8"):
    """8-bit Q, K, V codes (one merged [B, L, 3, H, D] tensor's transposed views, as a quantized
    Q/K/V projection writes them) and their float16 scales: float8 with one shared scale, or
    symmetric int8 with one scale each (precision/quantize_attention_inputs.py)."""
    b, h, lq, d = shape_q
    assert lq == lk
    qkv = torch.randn(b, lq, 3, h, d, generator=torch.Generator().manual_seed(seed)) * 3
    qkv[:, :, 2] *= 0.2                                          # V narrower than Q and K
    if kind == "fp8":
        scales = [(qkv.abs().max() / 448).to(torch.float16)] * 3
        codes = (qkv / scales[0].float()).clamp(-448, 448).to(torch.float8_e4m3fn)   # saturated (float16 scale)
    else:
        scales = [(qkv[:, :, i].abs().max() / 127).to(torch.float16) for i in range(3)]
        codes = torch.round(qkv / torch.stack(scales).float().view(1, 1, 3, 1, 1)).clamp(-127, 127).to(torch.int8)
    return [codes[:, :, i].transpose(1, 2) for i in range(3)], scales


CODE_KINDS = pytest.mark.parametrize("kind", ["fp8", "int8"])


@both_kernels
@CODE_KINDS
def test_codes_dequantized_by_their_scales(kind):
    """q_scale, k_scale, v_scale: the codes widened to float16 for both products; Y in the scales'
    type, against the reference (codes times scales, then float32 attention)."""
    (q, k, v), scales = _codes((2, 2, 24, 32), 24, kind=kind)
    mask = torch.zeros(2, 1, 1, 24)
    mask[1, ..., 18:] = -1e4
    dev = [t.to(DEV) for t in (q, k, v, mask)] + [None, None] + [s.to(DEV) for s in scales]
    got = ta.attention(*dev, config=KERNEL["config"]).cpu()
    want = REF(q, k, v, mask, None, None, *scales)
    assert got.dtype == want.dtype == torch.float16 and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    plain = REF(*(t.float() * s.float() for t, s in zip((q, k, v), scales)), mask)
    torch.testing.assert_close(want.float(), plain.float(), rtol=1e-3, atol=1e-3)


@both_kernels
@CODE_KINDS
def test_codes_requantized_output(kind):
    from kiln.compiler.tolerance import mismatch
    (q, k, v), scales = _codes((2, 2, 16, 32), 16, seed=6, kind=kind)
    out_scale = torch.tensor(0.004)
    got = ta.attention(*(t.to(DEV) for t in (q, k, v)), None, out_scale.to(DEV), None, *[s.to(DEV) for s in scales],
                       out_dtype=17, config=KERNEL["config"]).cpu()
    want = REF(q, k, v, None, out_scale, None, *scales, out_dtype=17)
    assert got.dtype == torch.float8_e4m3fn
    assert mismatch(got, want, "kiln::Attention") is None


def test_codes_refusals_and_support(monkeypatch):
    (q, k, v), scales = _codes((1, 1, 8, 32), 8)
    s = scales[0]
    with pytest.raises(AssertionError, match="take q_scale, k_scale and v_scale"):
        ta.attention(q.to(DEV), k.to(DEV), v.to(DEV), None, None, None, s.to(DEV), s.to(DEV))
    with pytest.raises(AssertionError, match="8-bit codes only"):
        f = torch.zeros(1, 1, 8, 32, device=DEV)
        ta.attention(f, f, f, None, None, None, *[s.to(DEV)] * 3)
    with pytest.raises(AssertionError, match="Q takes"):
        ta.attention(q.to(DEV), k.to(DEV), v.view(torch.int8).to(DEV), None, None, None, *[s.to(DEV)] * 3)
    from kiln.tactics import attention as tactics
    shapes = ((2, 12, 128, 64),) * 3 + (None, None, None, (), (), ())

    def query(code: str) -> TacticQuery:
        return TacticQuery("kiln::Attention", "cuda", (code,) * 3 + (None, None, None) + ("float16",) * 3, {}, shapes)

    monkeypatch.setattr(tactics, "device_capability", lambda: (9, 0))
    for code in ("float8_e4m3fn", "int8"):
        assert get_tactic("kiln::Attention.triton").supports(query(code))
        assert get_tactic("kiln::Attention.triton_one_tile").supports(query(code))
        assert not get_tactic("kiln::Attention.sdpa").supports(query(code))    # SDPA takes float inputs only
    assert not get_tactic("kiln::Attention.triton").supports(query("uint8"))     # codes without a zero point
    no_scale = TacticQuery("kiln::Attention", "cuda", ("float8_e4m3fn",) * 3, {}, shapes[:3])
    assert not get_tactic("kiln::Attention.triton").supports(no_scale)
    monkeypatch.setattr(tactics, "device_capability", lambda: (8, 0))   # no float8 before sm_89; int8 runs
    assert not get_tactic("kiln::Attention.triton").supports(query("float8_e4m3fn"))
    assert get_tactic("kiln::Attention.triton").supports(query("int8"))


@pytest.mark.gpu
@CODE_KINDS
def test_gpu_bert_base_shape_codes_every_config(kind):
    (q, k, v), scales = _codes((32, 12, 128, 64), 128, kind=kind)
    pad = torch.zeros(32, 1, 1, 128)
    pad[::3, ..., 100:] = -3.4e38
    want = REF(q, k, v, pad, None, None, *scales)
    for config in ta.CONFIGS + ta.ONE_TILE_CONFIGS:
        got = ta.attention(*(t.cuda() for t in (q, k, v, pad)), None, None, *[s.cuda() for s in scales],
                           config=dict(config))
        torch.testing.assert_close(got.cpu().float(), want.float(), rtol=1e-2, atol=1e-2)

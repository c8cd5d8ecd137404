"""Folded space to depth (kernels/triton/qconv_s2d.py, config S2D): the strided conv over few
channels as a stride-1 conv over overlapping folded pixels, against the reference kiln::QConv
(int8, float8: bit for bit on the exact operands of test_triton_qconv.py) and kiln::FusedConv
(float16/bfloat16: within compiler/tolerance.py), through both the pointer walk and the TMA
boxes; the fold's rule, its weight and its tactics. Interpreted on CPU at tiny tiles, compiled
with `pytest --device cuda` (there also every config of the S2D spaces at the stem's shape)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available
from kiln.tactics import TacticQuery

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.compiler.tolerance import mismatch  # noqa: E402
from kiln.kernels import conv_fold  # noqa: E402
from kiln.kernels.triton import conv as tc  # noqa: E402
from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402
from kiln.kernels.triton import qconv_s2d as s2d  # noqa: E402
from kiln.kernels.triton import qconv_window as qw  # noqa: E402
from kiln.tactics import quantized_conv as qc  # noqa: E402
from tests.kernels.test_triton_conv import _case, _reference  # noqa: E402
from tests.kernels.test_triton_qconv import DEV, F8, I8, _both, _channels_last, _exact_operands  # noqa: E402
from tests.kernels.test_triton_qconv import window_spy as _windows  # noqa: E402

TINY = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 2, "num_warps": 4, "num_stages": 2,
        "FP8_ACC": 32, "S2D": 1}
TINY_TMA = {**TINY, "BLOCK_K": 32, "TMA": 1}
TINY_PERSISTENT = {**TINY_TMA, "PERSISTENT": 1, "SM_PROGRAMS": 2}
# x shape, w shape, attributes: the stem, odd sizes and asymmetric padding, stride 4, C 5 and 16.
SHAPES = {
    "stem_c3": ((2, 3, 11, 11), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),
    "c5_asym": ((1, 5, 10, 9), (16, 5, 3, 3), {"pads": [0, 2, 1, 0], "strides": [2, 2]}),
    "s4_k4x5": ((1, 3, 13, 12), (24, 3, 4, 5), {"pads": [1, 2, 0, 1], "strides": [4, 4]}),
    "c16_same": ((1, 16, 9, 7), (16, 16, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
}


@pytest.mark.parametrize("config", [TINY, TINY_TMA, TINY_PERSISTENT], ids=["pointers", "tma", "tma-persistent"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_folded_conv_is_exact(name, dtype, config, monkeypatch):
    if DEV == "cuda" and dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = SHAPES[name]
    calls = _windows(monkeypatch)
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, dtype)
    got, want = _both(x, w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25), torch.tensor(0, dtype=I8),
                      activation="Relu", config=config, **attrs)
    assert torch.equal(got, want)
    assert len(calls) == (1 if config.get("TMA") and qw.descriptor_type() is not None else 0)


def test_folds_under_inference_mode():
    """The tuner runs candidates under inference mode; the folded weight is then still a tensor
    the launcher's memos can key (it failed every S2D config in the engine before)."""
    xs, ws, attrs = SHAPES["stem_c3"]
    x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, I8)
    args = (x, w, xsc, wsc, b, None, torch.tensor(0.25), torch.tensor(0, dtype=I8))
    want = _both(*args, config=TINY, **attrs)[1]
    x, w, xsc, wsc, b, _, osc, ozp = [None if t is None else t.to(DEV) for t in args]   # constants: normal tensors
    with torch.inference_mode():
        got = tq.qconv(x, w, xsc, None, wsc, None, b, None, osc, ozp, config=TINY, **attrs)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_folded_float_conv_within_tolerance(dtype):
    if dtype == torch.bfloat16 and DEV == "cpu":
        pytest.skip("the interpreter's bfloat16 dot is wrong (test_matmul_tactics.py): bfloat16 on the GPU only")
    xs, ws, attrs = SHAPES["stem_c3"]
    x, w, b = _case(xs, ws, dtype)
    want = _reference(x, w, b, None, activation="Relu", **attrs)
    got = tc.conv(x, w, b, None, activation="Relu", config={**TINY, "FP8_ACC": 0}, **attrs)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert mismatch(got, want, "kiln::FusedConv") is None


def test_fold_rule_and_sizes():
    stem = plan.conv_geometry((64, 3, 224, 224), (64, 3, 7, 7), pads=[3] * 4, strides=[2, 2])
    f = s2d.fold_of(3, stem)
    assert (f.s, f.pix, f.pixel, f.kh, f.kw, f.hs, f.ws) == (2, 4, 16, 4, 4, 115, 115)
    assert f.kw * f.pixel == 64                               # C' = 64: four taps of 16
    # KW' rounds up so that C' is a multiple of 32: a 3-wide kernel folds to 2 (not 1) columns.
    assert s2d.fold_of(3, plan.conv_geometry((1, 3, 8, 8), (8, 3, 3, 1), strides=[2, 2])).kw == 2
    assert conv_fold.folds(3, (2, 2), (1, 1)) and conv_fold.folds(5, (2, 2), (1, 1)) and conv_fold.folds(4, (4, 4), (1, 1))
    assert not conv_fold.folds(3, (1, 1), (1, 1))                   # stride 1: nothing to fold
    assert not conv_fold.folds(3, (2, 1), (1, 1))                   # unequal strides
    assert not conv_fold.folds(3, (2, 2), (2, 2))                   # dilated
    assert not conv_fold.folds(64, (2, 2), (1, 1))                  # 32k channels walk taps unfolded
    assert not conv_fold.folds(20, (2, 2), (1, 1))                  # a folded pixel of 80 elements
    assert not conv_fold.folds(3, (3, 3), (1, 1))                   # 36 elements: not 16-byte aligned


def test_folded_weight_places_every_tap_once():
    w = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).reshape(2, 3, 7, 7) + 1
    f = s2d.fold_of(3, plan.conv_geometry((1, 3, 16, 16), (2, 3, 7, 7), pads=[3] * 4, strides=[2, 2]))
    folded = s2d.folded_weight(w, f)
    assert folded.shape == (2, 64, 4, 1) and folded is s2d.folded_weight(w, f)      # made once
    blocks = folded[..., 0].reshape(2, 4, 2, 2, 4, 4)          # [oc, kw', dy, dx, c, kh']
    for kh in range(7):
        for kw in range(7):
            assert torch.equal(blocks[:, kw // 2, kh % 2, kw % 2, :3, kh // 2], w[:, :, kh, kw])
    assert int((folded != 0).sum()) == w.numel()             # the rest is zeros


def test_refuses_a_conv_that_does_not_fold():
    x, w, xsc, wsc, _, _ = _exact_operands((1, 32, 6, 6), (16, 32, 3, 3), {"strides": [2, 2]})
    with pytest.raises(ValueError, match="space to depth"):
        tq.qconv(x.to(DEV), w.to(DEV), xsc.to(DEV), None, wsc.to(DEV), strides=[2, 2], config=TINY)


def _qconv_query(c, strides, dilations=None, q="int8"):
    attrs = {"strides": strides, "activation": "Relu", **({"dilations": dilations} if dilations else {})}
    dts = (q, q, "float32", None, "float32", None, "float32")
    shapes = ((64, c, 224, 224), (64, c, 7, 7), (), None, (64,), None, (64,))
    return TacticQuery("kiln::QConv", "cuda", dts, attrs, shapes, "nhwc")


def test_s2d_tactics_take_the_folding_convs_only(monkeypatch):
    monkeypatch.setattr(qc, "device_capability", lambda: (9, 0))
    assert qc.folds(_qconv_query(3, [2, 2])) and not qc.folds(_qconv_query(3, [1, 1]))
    assert not qc.folds(_qconv_query(64, [2, 2])) and not qc.folds(_qconv_query(3, [2, 2], [2, 2]))
    from kiln.tactics import candidates
    names = {t.name for t in candidates(_qconv_query(3, [2, 2]))}
    assert {"kiln::QConv.triton_nhwc", "kiln::QConv.triton_nhwc_s2d"} <= names
    assert "kiln::QConv.triton_nhwc_s2d" not in {t.name for t in candidates(_qconv_query(3, [1, 1]))}
    fp8 = {t.name for t in candidates(_qconv_query(3, [2, 2], q="float8_e4m3fn"))}
    assert "kiln::QConv.triton_nhwc_fp8_s2d" in fp8 and "kiln::QConv.triton_nhwc_s2d" not in fp8


def test_s2d_spaces_are_well_formed():
    for cfg in plan.INT8_S2D_CONFIGS + plan.FP8_S2D_CONFIGS:
        assert cfg["S2D"] == 1 and cfg["BLOCK_K"] >= 32
        assert (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * cfg["num_stages"] <= 227 * 1024
    assert all("FP8_ACC" in c for c in plan.FP8_S2D_CONFIGS)


# --- GPU: the stem's geometry under every config of the spaces ------------------------------------

STEM = ((8, 3, 224, 224), (64, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_gpu_stem_every_s2d_config_exact(dtype):
    if dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = STEM
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, dtype)
    # fp8: K 147 products of integers <= 4 in magnitude: exact in any accumulator.
    for config in plan.INT8_S2D_CONFIGS if dtype == I8 else plan.FP8_S2D_CONFIGS:
        got, want = _both(x, w, xsc, wsc, b, None, torch.tensor(0.25), torch.tensor(0, dtype=I8),
                          activation="Relu", config=config, **attrs)
        assert torch.equal(got, want), config


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_stem_folded_float(dtype):
    """16-bit operands fold too (no tactic offers it: slower than their ROWS walk on the stem)."""
    xs, ws, attrs = STEM
    x, w, b = _case(xs, ws, dtype, seed=1)
    want = _reference(x, w, b, None, activation="Relu", **attrs)
    for cfg in plan.INT8_S2D_CONFIGS[:2]:
        got = tc.conv(x, w, b, None, activation="Relu", config=dict(cfg), **attrs)
        assert mismatch(got, want, "kiln::FusedConv") is None, cfg


def test_empty_batch_folds_to_an_empty_output():
    xs, ws, attrs = SHAPES["stem_c3"]
    x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs)
    y = tq.qconv(x[:0].to(DEV), w.to(DEV), xsc.to(DEV), None, wsc.to(DEV), None, b.to(DEV), config=TINY, **attrs)
    assert y.shape == (0, 16, 6, 6)


def test_window_walk_reads_pixels_at_any_aligned_distance(monkeypatch):
    """The relaxed WINDOW rule (qconv_window.window_applies): a stride-1 conv over channels-last
    pixels that are not dense (here every other pixel of a wider image) runs by TMA boxes of
    X's own strides, exactly."""
    if qw.descriptor_type() is None:
        pytest.skip("this Triton has no host TMA descriptors")
    calls = _windows(monkeypatch)
    attrs = {"pads": [1, 1, 1, 1]}
    x, w, xsc, wsc, b, r = _exact_operands((2, 32, 5, 6), (16, 32, 3, 3), attrs)
    wide = torch.zeros((2, 32, 5, 12), dtype=I8).contiguous(memory_format=torch.channels_last)
    wide[..., ::2] = x
    got, want = _both(wide[..., ::2], w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25),
                      torch.tensor(0, dtype=I8), activation="Relu", config={**TINY_TMA, "S2D": 0}, **attrs)
    assert torch.equal(got, want) and len(calls) == 1


@pytest.mark.parametrize("config", [TINY, {**TINY, "S2D": 0}, TINY_TMA], ids=["folded", "rows", "folded_tma"])
@pytest.mark.parametrize("wtype, code", [(I8, 3), (F8, 17)], ids=["int8", "fp8"])
@pytest.mark.parametrize("xtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("own_scale", [False, True], ids=["x_scale", "x_quant_scale"])
def test_float_input_quantized_in_the_layer(own_scale, xtype, wtype, code, config):
    """x_dtype: a float X quantized first (the reference's QuantizeLinear), by the framing copy in
    the folded walk, by the QuantizeLinear kernel in the others: the same codes, the same output;
    with x_quant_scale (a float32 scale other than x_scale), quantized by that scale."""
    if DEV == "cuda" and wtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    from kiln.kernels.reference.quantized import qconv as reference_qconv

    xs, ws, attrs = SHAPES["stem_c3"]
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(xs, generator=gen) * 2).to(xtype)
    _, w, _, wsc, b, _ = _exact_operands(xs, ws, attrs, wtype)
    xsc = torch.tensor(0.0625, dtype=xtype)
    zp = torch.zeros((), dtype=I8) if wtype == I8 else None
    args = [x, w, xsc, zp, wsc, None, b, None, torch.tensor(0.25), None]
    if own_scale:
        args += [None, None, torch.tensor(0.0601)]
    kw = dict(attrs, activation="Relu", x_dtype=code, out_dtype=3)
    want = reference_qconv(*args, **kw)
    if own_scale:
        assert not torch.equal(want, reference_qconv(*args[:10], **kw))   # the scale made a difference
    got = tq.qconv(*[None if t is None else t.to(DEV) for t in args], config=config, **kw)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("config", [TINY, {**TINY, "S2D": 0}, TINY_TMA], ids=["folded", "rows", "folded_tma"])
def test_float_input_quantized_to_uint8_in_the_layer(config):
    """x_dtype uint8 under int8 W (ONNX Runtime's QDQ stem, its QuantizeLinear fused): the frame holds
    the zero point's code (the code of 0), the kernel shifts X and subtracts the zero point."""
    from kiln.kernels.reference.quantized import qconv as reference_qconv

    xs, ws, attrs = SHAPES["stem_c3"]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(xs, generator=gen) * 2
    _, w, _, wsc, b, _ = _exact_operands(xs, ws, attrs, I8)
    args = [x, w, torch.tensor(0.0625), torch.tensor(130, dtype=torch.uint8), wsc, None, b, None,
            torch.tensor(0.25), None]
    kw = dict(attrs, activation="Relu", x_dtype=2, out_dtype=3)
    want = reference_qconv(*args, **kw)
    got = tq.qconv(*[None if t is None else t.to(DEV) for t in args], config=config, **kw)
    assert torch.equal(got.cpu(), want) and int((want != 0).sum()) > 0

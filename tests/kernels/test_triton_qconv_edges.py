"""The Triton kiln::QConv (kernels/triton/qconv.py) against the reference kiln::QConv: memory
formats, parameter shapes, edges, refusals, the weight packing and the K walks' choices, and the
tuning spaces' form. Interpreted on CPU at tiny tiles (test_triton_qconv.py's helpers), compiled
with `pytest --device cuda`."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

import gc  # noqa: E402

from kiln.kernels.reference.quantized import qconv as reference_qconv  # noqa: E402
from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402
from kiln.kernels.triton.qgemm_tma import staged_bytes  # noqa: E402
from tests.kernels.test_triton_qconv import (DEV, GEOMETRIES, I8, TINY, _both, _channels_last,  # noqa: E402
                                             _exact_operands, _out_shape, _to)

@pytest.mark.parametrize("name", ["1x1s1", "3x3s1p1", "stem_c3"])
def test_nchw_input_and_both_output_formats(name):
    # An NCHW X is converted; Y is channels-last by default, NCHW when asked (the nchw tactics).
    xs, ws, attrs, _ = GEOMETRIES[name]
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, seed=5)
    args = (x, w, xsc, None, wsc, None, b, _channels_last(r), torch.tensor(0.25), torch.tensor(0, dtype=I8))
    want = reference_qconv(*args, **attrs)
    got = tq.qconv(*_to(DEV, *args), config=TINY, **attrs).cpu()
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    got = tq.qconv(*_to(DEV, *args), config=TINY, channels_last_out=False, **attrs).cpu()
    assert got.is_contiguous() and torch.equal(got, want)
    got, want = _both(x, w, xsc, wsc, b, r, **attrs)                          # float output, NCHW residual
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)


def test_per_tensor_scale_scalar_bias_and_broadcast_residual():
    xs, ws, attrs, _ = GEOMETRIES["3x3d2"]
    x, w, xsc, _, _, _ = _exact_operands(xs, ws, attrs, seed=6)
    out = _out_shape(xs, ws, attrs)
    residual = (torch.arange(ws[0], dtype=torch.float32) / 4).reshape(1, ws[0], 1, 1)       # stride-0 dims
    got, want = _both(x, w, xsc, torch.tensor(2.0 ** -5), torch.tensor([1.25]), residual.expand(out),
                      torch.tensor(0.5), torch.tensor(3, dtype=I8), activation="Clip", activation_params=[-20, 20],
                      **attrs)
    assert torch.equal(got, want)


@pytest.mark.parametrize("c", [64, 48])
def test_channels_and_pixels_past_the_tile_edge(c):
    # OC = 24 and M = 2*5*5 = 50 are not multiples of BLOCK_N = 16 / BLOCK_M = 32; C = 64 takes
    # two channel blocks per tap, C = 48 five blocks of a 144-long kernel row padded to 160.
    xs, ws, attrs = (2, c, 5, 5), (24, c, 3, 3), {"pads": [1, 1, 1, 1]}
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, seed=7)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, r, torch.tensor(0.25), torch.tensor(0, dtype=I8), **attrs)
    assert torch.equal(got, want)


def test_k_loop_choices():
    def loop(c, ws, bk=128, dense=True, hw=(56, 56), **attrs):
        return plan.k_loop(c, plan.conv_geometry((1, c, *hw), (8, c, *ws), **attrs), bk, dense, *hw)
    assert loop(64, (3, 3), pads=[1] * 4) == plan.KLoop(plan.TAPS, 64, 1)
    assert loop(256, (3, 3), pads=[1] * 4) == plan.KLoop(plan.TAPS, 128, 2)
    assert loop(256, (1, 1)) == plan.KLoop(plan.PIXELS, 128, 2)
    assert loop(256, (1, 1), dense=False).path == plan.TAPS and loop(256, (1, 1), strides=[2, 2]).path == plan.TAPS
    # ResNet's stem: pixels of 3 channels read as 4 (one zero), a kernel row of 28 in one step of 32
    assert loop(3, (7, 7), pads=[3] * 4, strides=[2, 2]) == plan.KLoop(plan.ROWS, 32, 1, 32, tap_pad=4, pixel=4)
    assert loop(48, (3, 3)) == plan.KLoop(plan.ROWS, 32, 5, 160, pixel=48)                       # least padding
    assert loop(16, (3, 3)) == plan.KLoop(plan.ROWS, 64, 1, 64, pixel=16)
    assert loop(6, (3, 3)) == plan.KLoop(plan.ROWS, 32, 1, 32, tap_pad=8, pixel=8)
    # A dilation along W: taps, channels padded to a BLOCK_K of 32..128 (least padding, then larger).
    assert loop(16, (3, 3), dilations=[1, 2]) == plan.KLoop(plan.TAPS, 32, 1, tap_pad=32)
    assert loop(48, (3, 3), dilations=[2, 2]) == plan.KLoop(plan.TAPS, 64, 1, tap_pad=64)
    assert loop(48, (3, 3), bk=32, dilations=[2, 2]) == plan.KLoop(plan.TAPS, 32, 2, tap_pad=64)
    assert loop(40, (1, 3), dilations=[2, 1]).path == plan.ROWS and loop(40, (3, 1), dilations=[1, 2]).path == plan.ROWS
    assert plan._block_k(32, 48) == 16 and plan._block_k(128, 64) == 64 and plan._block_k(64, 192) == 64
    # No 8-bit dot compiles with a 16-deep K on the GPU, so no walk takes one.
    with pytest.raises(AssertionError, match="K in steps of 32"):
        loop(64, (3, 3), bk=16)


def test_weight_zero_point_zero_or_refused():
    """W's zero point must be 0 (X's may be anything: test_triton_qconv_zero_point.py)."""
    xs, ws, attrs, _ = GEOMETRIES["1x1s1"]
    x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, seed=8)
    zero = torch.tensor(0, dtype=I8)
    got = tq.qconv(*_to(DEV, x, w, xsc, zero, wsc, torch.zeros(ws[0], dtype=I8), b), config=TINY)
    torch.testing.assert_close(got.cpu(), reference_qconv(x, w, xsc, zero, wsc, None, b))
    with pytest.raises(ValueError, match="w_zp absent or 0"):
        tq.qconv(*_to(DEV, x, w, xsc, None, wsc, torch.ones(ws[0], dtype=I8)), config=TINY)


def test_empty_batch():
    x = torch.zeros(0, 16, 5, 5, dtype=I8, device=DEV)
    w = torch.ones(16, 16, 3, 3, dtype=I8, device=DEV)
    one = torch.tensor(1.0, device=DEV)
    y = tq.qconv(x, w, one, None, one, pads=[1, 1, 1, 1], config=TINY)
    assert y.shape == (0, 16, 5, 5) and y.dtype == torch.float32


def test_launcher_refuses_what_it_cannot_run():
    one = torch.tensor(1.0)
    with pytest.raises(AssertionError, match="group 1"):
        tq.qconv(torch.zeros(1, 32, 5, 5, dtype=I8), torch.zeros(32, 16, 3, 3, dtype=I8), one, None, one, group=2)
    with pytest.raises(AssertionError, match="both be int8, float8_e4m3fn, float16 or bfloat16"):
        tq.qconv(torch.zeros(1, 16, 5, 5, dtype=torch.uint8), torch.zeros(16, 16, 1, 1, dtype=torch.uint8), one, None,
                 one)
    with pytest.raises(AssertionError, match="cannot write a int16"):
        tq.qconv(torch.zeros(1, 16, 5, 5, dtype=I8), torch.zeros(16, 16, 1, 1, dtype=I8), one, None, one,
                 out_scale=one, out_dtype=5)


def test_weight_is_packed_once_per_tensor():
    w = torch.randint(-5, 5, (8, 16, 3, 3), dtype=I8)
    first = plan.packed_weight(w)
    assert first.shape == (8, 144) and first.is_contiguous() and plan.packed_weight(w) is first
    assert torch.equal(first.reshape(8, 3, 3, 16), w.permute(0, 2, 3, 1))
    w.add_(1)                                                   # in place: a new version, a new copy
    again = plan.packed_weight(w)
    assert again is not first and torch.equal(again.reshape(8, 3, 3, 16), w.permute(0, 2, 3, 1))
    cl = _channels_last(w)                                      # already packed: a view, nothing kept
    count = len(plan._PACKED)
    assert plan.packed_weight(cl).data_ptr() == cl.data_ptr() and len(plan._PACKED) == count
    del w, first, again
    gc.collect()
    assert len(plan._PACKED) == count - 1
    stem = torch.randint(-5, 5, (8, 3, 7, 7), dtype=I8)            # ROWS: kernel rows of 21 padded to 32
    rows = plan.packed_weight(stem, 32).reshape(8, 7, 32)
    assert torch.equal(rows[:, :, :21], stem.permute(0, 2, 3, 1).reshape(8, 7, 21)) and not rows[:, :, 21:].any()
    taps = plan.packed_weight(stem, tap_pad=32).reshape(8, 7, 7, 32)  # TAPS over padded channels: 3 of 32
    assert torch.equal(taps[..., :3], stem.permute(0, 2, 3, 1)) and not taps[..., 3:].any()
    assert plan.packed_weight(stem, 32) is not plan.packed_weight(stem, tap_pad=32)    # one entry per packing
    # ROWS over pixels of 4: each tap's 3 channels and a zero, a kernel row of 28 padded to 32
    rows4 = plan.packed_weight(stem, 32, tap_pad=4).reshape(8, 7, 32)
    assert torch.equal(rows4[:, :, :28].reshape(8, 7, 7, 4)[..., :3], stem.permute(0, 2, 3, 1))
    assert not rows4[:, :, :28].reshape(8, 7, 7, 4)[..., 3].any() and not rows4[:, :, 28:].any()


def test_geometry_matches_the_reference_and_configs_are_well_formed():
    for xs, ws, attrs, _ in GEOMETRIES.values():
        x, w = torch.zeros(xs, dtype=I8), torch.zeros(ws, dtype=I8)
        one = torch.tensor(1.0)
        assert _out_shape(xs, ws, attrs) == tuple(reference_qconv(x, w, one, None, one, **attrs).shape)
    assert plan.conv_geometry((1, 16, 5, 5), (4, 16, 1, 1)).pointwise(5, 5)
    assert not plan.conv_geometry((1, 16, 5, 5), (4, 16, 1, 1), pads=[0, 0, 1, 1]).pointwise(5, 5)
    keys = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}
    window = {"TMA", "PERSISTENT", "Y_TMA", "SM_PROGRAMS", "IMAGES"}            # qconv_window.py's walk
    assert all(keys <= set(c) <= keys | window for c in tq.INT8_CONFIGS)
    assert all(keys | {"FP8_ACC"} <= set(c) <= keys | window | {"FP8_ACC"} for c in tq.FP8_CONFIGS)
    assert tq.FP8_CONFIGS[0]["FP8_ACC"] > 0 and "TMA" not in tq.FP8_CONFIGS[0]
    assert any(c.get("TMA") for c in tq.INT8_CONFIGS) and any(c.get("PERSISTENT") for c in tq.FP8_CONFIGS)
    for c in tq.INT8_CONFIGS + tq.FP8_CONFIGS:   # pipelined operands fit an H100/H200 block's shared memory
        assert (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * c["num_stages"] <= 227 * 1024
        assert c["BLOCK_K"] >= plan.MIN_BLOCK_K                      # 8-bit dots take K in 32s
        if c.get("SM_PROGRAMS", 1) > 1:                              # two fit an SM: stages, 8-bit Y box
            assert c["PERSISTENT"] and 2 * staged_bytes(c, 1, 1) <= 227 * 1024

"""The WINDOW walk of the Triton kiln::QConv (kernels/triton/qconv_window.py: TMA boxes over a
strided view of X) against the reference kiln::QConv, and its box choice.

CPU: Triton's interpreter runs the TMA loads (out-of-bounds boxes zero-filled, as the copy engine
does) at tiny tiles; the exact operands of test_triton_qconv.py make every epilogue step exact, so
the requantized output equals the reference's bit for bit. GPU (`pytest --device cuda`): the
same checks compiled, where TMA descriptors exist (the real tiles run in test_triton_qconv.py's
every-config tests)."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402
from kiln.kernels.triton import qconv_window as qw  # noqa: E402
from kiln.kernels.triton.qgemm_tma import store_tma_ok  # noqa: E402

from kiln.kernels.reference.quantized import qconv as reference_qconv  # noqa: E402
from tests.kernels.test_triton_qconv import (DEV, F8, I8, _both, _channels_last, _exact_operands,  # noqa: E402
                                             _out_shape, _residual_8bit, _to)
from tests.kernels.test_triton_qconv import window_spy as _spy  # noqa: E402

if qw.descriptor_type() is None:
    pytest.skip("this Triton has no host TMA descriptors", allow_module_level=True)

# Tiny tiles (BLOCK_K 64 on purpose: the walk must take the loop's 32 where C is 32).
WINDOW = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 2, "num_warps": 4, "num_stages": 2,
          "FP8_ACC": 32, "TMA": 1}
PERSISTENT = {**WINDOW, "PERSISTENT": 1}
SHARED = {**PERSISTENT, "SM_PROGRAMS": 2}                    # two programs per SM: 8 off the GPU
POINTERS = {k: v for k, v in WINDOW.items() if k != "TMA"}   # qconv.py's PIXELS walk for a 1x1 stride-1 conv
IMAGES = {**WINDOW, "IMAGES": 1}                             # boxes of BLOCK_M images at one pixel
IMAGES_PERSISTENT = {**PERSISTENT, "IMAGES": 1}

# x shape, w shape, attributes: padding at every edge, strides 1 and 2, 1x1 (flat rows and the
# strided view), boxes running past the images, more channels than one K step.
SHAPES = {
    "3x3s1p1": ((2, 32, 6, 6), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3s2p1": ((3, 64, 8, 6), (24, 64, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "1x1s1": ((2, 32, 5, 7), (16, 32, 1, 1), {}),
    "1x1s2": ((2, 64, 6, 8), (16, 64, 1, 1), {"strides": [2, 2]}),
    "5x3_asym": ((1, 32, 7, 9), (16, 32, 5, 3), {"pads": [2, 0, 1, 1]}),
    "oc_past_tile": ((2, 32, 4, 4), (40, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("config", [WINDOW, PERSISTENT, SHARED, IMAGES, IMAGES_PERSISTENT],
                         ids=["tile", "persistent", "two-per-sm", "images", "images-persistent"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_window_walk_is_exact(name, dtype, config, monkeypatch):
    if DEV == "cuda" and dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = SHAPES[name]
    calls = _spy(monkeypatch)
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, dtype, seed=3)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25),
                      torch.tensor(0, dtype=I8) if dtype == I8 else None, activation="Relu", config=config, **attrs)
    assert calls, "the WINDOW walk did not run"
    assert torch.equal(got, want)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, None, activation="Relu", config=config, **attrs)
    assert torch.equal(got, want)


def _spy_boxes(monkeypatch):
    """Whether each launch stored through TMA boxes (store_boxes' verdict)."""
    boxed = []
    real = qw.store_boxes
    monkeypatch.setattr(qw, "store_boxes", lambda *a, **k: (lambda r: (boxed.append(r[2]), r)[1])(real(*a, **k)))
    return boxed


@pytest.mark.parametrize("residual", ["none", "float", "int8", "uint8", "fp8"])
@pytest.mark.parametrize("out", ["int8", "float"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("config", [WINDOW, PERSISTENT, POINTERS], ids=["tile", "persistent", "pixels-walk"])
def test_tma_store_is_exact_and_matches_the_pointer_store(config, dtype, out, residual, monkeypatch):
    """Y_TMA on flat rows (a 1x1 stride-1 conv, either walk): Y leaves as TMA boxes, clipped at M = 70 pixels,
    beside a float or 8-bit residual read through pointers; the same codes as the reference and as
    the pointer store, bit for bit."""
    if DEV == "cuda" and dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = SHAPES["1x1s1"]
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, dtype, seed=7)
    rs = rzp = None
    if residual == "none":
        r = None
    elif residual != "float":
        r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), {"int8": I8, "uint8": torch.uint8, "fp8": F8}[residual],
                                    torch.Generator().manual_seed(8))
    os_, ozp = (torch.tensor(0.25), torch.tensor(0, dtype=I8)) if out == "int8" else (None, None)
    args = (_channels_last(x), w, xsc, None, wsc, None, b, None if r is None else _channels_last(r), os_, ozp, rs, rzp)
    want = reference_qconv(*args, activation="Relu")
    boxed = _spy_boxes(monkeypatch)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config={**config, "Y_TMA": 1}).cpu()
    plain = tq.qconv(*_to(DEV, *args), activation="Relu", config=config).cpu()
    assert boxed == [True]
    assert torch.equal(got, want) and torch.equal(got, plain)


def test_tma_store_falls_back_where_rows_are_not_aligned(monkeypatch):
    """24 int8 output channels: rows of 24 bytes, not a TMA box's 16-byte multiple: the pointer store."""
    xs, ws, attrs = (2, 32, 5, 7), (24, 32, 1, 1), {}
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=9)
    boxed = _spy_boxes(monkeypatch)
    got, want = _both(_channels_last(x), w, xsc, wsc, b, _channels_last(r), torch.tensor(0.25),
                      torch.tensor(0, dtype=I8), activation="Relu", config={**WINDOW, "Y_TMA": 1}, **attrs)
    assert boxed == [False] and torch.equal(got, want)


def test_tma_store_counts_the_residual_tiles_shared_memory():
    """The int8 128x256x128 persistent tile with an int8 residual: its Y box fits with an int8 Y
    (213,016 bytes compiled for sm_90) but not with a float16 one (245,784 > 232,448): the residual
    tile moves between layouts through shared memory too, so it counts."""
    cfg = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3,
           "TMA": 1, "PERSISTENT": 1, "Y_TMA": 1}
    cl = torch.channels_last
    y8 = torch.empty((64, 2048, 7, 7), dtype=I8).contiguous(memory_format=cl)
    y16 = torch.empty((64, 2048, 7, 7), dtype=torch.float16).contiguous(memory_format=cl)
    assert qw.output_boxes(y8, cfg, 128, 1, 1)[1]
    assert not qw.output_boxes(y16, cfg, 128, 1, 1)[1]
    assert qw.output_boxes(y16, cfg, 128, 1, 0)[1]                 # no residual: it fits
    assert qw.output_boxes(y16, {**cfg, "Y_TMA": 0}, 128, 1, 0) == (y16, False)


def test_nchw_output_and_nchw_residual_take_the_strided_view(monkeypatch):
    xs, ws, attrs = SHAPES["1x1s1"]
    calls = _spy(monkeypatch)
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=4)
    want = reference_qconv(x, w, xsc, None, wsc, None, b, r, activation="Relu")
    got = tq.qconv(*_to(DEV, _channels_last(x), w, xsc, None, wsc, None, b, r), activation="Relu", config=WINDOW,
                   channels_last_out=False)
    assert calls == [False] and got.is_contiguous() and torch.equal(got.cpu(), want)   # not as flat rows


def test_walk_applies_only_where_it_can(monkeypatch):
    calls = _spy(monkeypatch)
    cases = [((1, 16, 8, 8), (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}),                    # C not a multiple of 32
             ((1, 32, 8, 8), (16, 32, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),  # dilation
             ((1, 32, 7, 7), (16, 32, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]})]    # odd H, stride 2
    for xs, ws, attrs in cases:
        x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=5)
        got, want = _both(_channels_last(x), w, xsc, wsc, b, r, config=WINDOW, **attrs)
        assert torch.equal(got, want)
    # A channels-last weight at an odd address (its packed form is a view of it): no TMA descriptor.
    xs, ws, attrs = SHAPES["1x1s1"]
    x, w, xsc, wsc, b, r = _exact_operands(xs, ws, attrs, I8, seed=6)
    flat = torch.empty(w.numel() + 1, dtype=I8)
    odd = flat[1:].view(ws[0], 1, 1, ws[1]).permute(0, 3, 1, 2)           # channels-last, misaligned
    odd.copy_(w)
    assert odd.is_contiguous(memory_format=torch.channels_last) and odd.data_ptr() % 16
    if DEV == "cpu":
        got, want = _both(_channels_last(x), odd, xsc, wsc, b, r, config=WINDOW, **attrs)
        assert torch.equal(got, want)
    x, w, xsc, wsc, b, r = _exact_operands(*SHAPES["3x3s1p1"][:3], I8, seed=5)
    got, want = _both(x, w, xsc, wsc, b, r, config=WINDOW, **SHAPES["3x3s1p1"][2])   # NCHW X: converted first
    assert torch.equal(got, want) and calls == [False]


def test_box_wastes_the_fewest_pixels():
    # ResNet-50's outputs at batch 64 tile exactly; 7x7 with 128 pixels wastes an eighth.
    assert qw.window_box(64, 56, 56, 128) == (2, 8, 8)
    assert qw.window_box(64, 28, 28, 128) == (8, 4, 4)
    assert qw.window_box(64, 14, 14, 128) == (32, 2, 2)
    assert qw.window_box(64, 7, 7, 64) == (64, 1, 1)
    assert qw.window_box(1, 1, 200704, 256) == (1, 1, 256)
    for n, oh, ow, bm in ((64, 7, 7, 128), (3, 5, 9, 32), (1, 1, 1000, 128), (300, 1, 1, 512)):
        def computed(box):
            return -(-n // box[0]) * box[0] * -(-oh // box[1]) * box[1] * -(-ow // box[2]) * box[2]
        splits = [(bm // (bh * bw), bh, bw) for bh in (1, 2, 4, 8, 16, 32) for bw in (1, 2, 4, 8, 16, 32, 64, 128)
                  if bm % (bh * bw) == 0 and bm // (bh * bw) <= qw.MAX_BOX]
        box = qw.window_box(n, oh, ow, bm)
        assert box[0] * box[1] * box[2] == bm and max(box) <= qw.MAX_BOX
        assert computed(box) == min(computed(s) for s in splits)


def test_window_configs_fit_and_are_in_both_spaces():
    tma = [c for c in tq.INT8_CONFIGS + tq.FP8_CONFIGS if c.get("TMA")]
    assert tma and all(c["BLOCK_K"] >= plan.MIN_BLOCK_K and c["BLOCK_N"] <= qw.MAX_BOX for c in tma)
    # Every config with Y_TMA stores an 8-bit Y as TMA boxes beside its stages.
    y = torch.empty((4096, 256), dtype=I8)
    boxed = [c for c in tq.INT8_CONFIGS + tq.FP8_CONFIGS if c.get("Y_TMA")]
    assert boxed and all(store_tma_ok(c, 1, y) for c in boxed)


def test_images_boxes_take_the_images_view(monkeypatch):
    """IMAGES=1: the descriptor is of [H/SH, SH, W/SW, N, SW*C] with boxes [1, 1, 1, BLOCK_M, BLOCK_K]
    (BLOCK_M images at one pixel; 32 here, past the batch of 3: masked), and the output is exact;
    a 1x1 stride-1 conv keeps its flat row of pixels."""
    made = []
    real = qw.x_descriptor
    monkeypatch.setattr(qw, "x_descriptor", lambda *a, **k: (made.append(a[5] if len(a) > 5 else k.get("images")),
                                                             real(*a, **k))[1])
    for name, images in (("3x3s2p1", True), ("1x1s1", False)):
        made.clear()
        xs, ws, attrs = SHAPES[name]
        x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, I8, seed=5)
        got, want = _both(_channels_last(x), w, xsc, wsc, b, None, activation="Relu", config=IMAGES, **attrs)
        assert torch.equal(got, want) and made == [images]
    x = torch.zeros(3, 64, 8, 6, dtype=I8).contiguous(memory_format=torch.channels_last)
    geo = plan.conv_geometry(x.shape, (24, 64, 3, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    desc = real(x, geo, False, (32, 1, 1), 64, True)
    assert list(desc.shape) == [4, 2, 3, 3, 128] and list(desc.block_shape) == [1, 1, 1, 32, 64]
    assert list(desc.strides) == [2 * 6 * 64, 6 * 64, 2 * 64, 8 * 6 * 64, 1]

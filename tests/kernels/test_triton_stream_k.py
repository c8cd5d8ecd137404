"""Stream-K and split-K in the WINDOW walk of the Triton kiln::QConv (configs STREAM_K, SPLIT_K;
kernels/triton/stream_k.py): the tiles' K steps shared evenly among the programs (or each tile's
among SPLIT_K programs), split tiles combined by the piece that counts in last. On the exact operands of test_triton_qconv.py every partial sum is exact, so the output
equals the reference bit for bit however the tiles are split; the tile counters are back at zero
after every launch, and a second launch gives the same bits (the pieces are added in program order,
not arrival order). CPU: Triton's interpreter with 4 programs (qgemm_tma.sm_count off the GPU);
GPU (`pytest --device cuda`): compiled, one program per SM."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.reference.quantized import qconv as reference_qconv  # noqa: E402
from kiln.kernels.triton import qconv as tq  # noqa: E402
from kiln.kernels.triton import stream_k as sk  # noqa: E402
from kiln.kernels.triton.qconv_window import descriptor_type  # noqa: E402
from tests.kernels.test_triton_qconv import (DEV, F8, I8, _channels_last, _exact_operands, _out_shape,  # noqa: E402
                                             _residual_8bit, _to, window_spy)

if descriptor_type() is None:
    pytest.skip("this Triton has no host TMA descriptors", allow_module_level=True)

STREAM_K = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2,
            "FP8_ACC": 0, "TMA": 1, "STREAM_K": 1}
SPLIT_K = {**STREAM_K, "STREAM_K": 0, "SPLIT_K": 4}    # 4 pieces a tile, or the most below that divide its steps
# x shape, w shape, attributes: one tile of 9 K steps (every program holds a piece of it: four
# pieces off the GPU), three tiles of 18 steps (pieces that start and end inside tiles), a 1x1
# stride-1 conv over flat rows (whole tiles and pieces), a strided 3x3 over two channel blocks, a
# strided 1x1 (ResNet's downsampling convs: pieces of four K steps).
SHAPES = {
    "one_tile": ((1, 32, 4, 4), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
    "three_tiles": ((1, 64, 6, 8), (16, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    "flat_rows": ((2, 64, 5, 7), (48, 64, 1, 1), {}),
    "strided": ((2, 64, 8, 6), (24, 64, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "1x1_strided": ((4, 128, 8, 8), (32, 128, 1, 1), {"strides": [2, 2]}),
}


def _counters_zero() -> bool:
    return all(int(c.abs().sum()) == 0 for c in sk._COUNTERS.values())


@pytest.mark.parametrize("config", [STREAM_K, SPLIT_K], ids=["stream-k", "split-k"])
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_pieces_are_exact_and_leave_the_counters_at_zero(name, dtype, config, monkeypatch):
    if DEV == "cuda" and dtype == F8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = SHAPES[name]
    calls = window_spy(monkeypatch)
    x, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, dtype, seed=11)
    r, rs, rzp = _residual_8bit(_out_shape(xs, ws, attrs), I8, torch.Generator().manual_seed(12))
    args = (_channels_last(x), w, xsc, None, wsc, None, b, _channels_last(r), torch.tensor(0.25),
            torch.tensor(0, dtype=I8), rs, rzp)
    want = reference_qconv(*args, activation="Relu", **attrs)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=config, **attrs)
    again = tq.qconv(*_to(DEV, *args), activation="Relu", config=config, **attrs)
    assert len(calls) == 2, "the WINDOW walk did not run"
    assert int((want != 0).sum()) > 0 and torch.equal(got.cpu(), want) and torch.equal(again, got)
    assert _counters_zero()
    # A float output, no residual: the same sums through the float epilogue.
    args = (_channels_last(x), w, xsc, None, wsc, None, b)
    want = reference_qconv(*args, **attrs)
    got = tq.qconv(*_to(DEV, *args), config=config, **attrs).cpu()
    assert torch.equal(got, want) and _counters_zero()


@pytest.mark.parametrize("config", [STREAM_K, SPLIT_K], ids=["stream-k", "split-k"])
def test_zero_point_taken_once_per_tile(config):
    """uint8 X with a zero point (a 1x1 stride-1 conv: no padding read): the correction
    za * sum(W) leaves the combined sum once, not once per piece."""
    xs, ws, attrs = SHAPES["flat_rows"]
    g = torch.Generator().manual_seed(13)
    x = torch.randint(60, 140, xs, generator=g).to(torch.uint8)
    _, w, xsc, wsc, b, _ = _exact_operands(xs, ws, attrs, I8, seed=13)
    args = (_channels_last(x), w, xsc, torch.tensor(100, dtype=torch.uint8), wsc, None, b, None, torch.tensor(0.25),
            torch.tensor(0, dtype=I8))
    want = reference_qconv(*args, activation="Relu", **attrs)
    got = tq.qconv(*_to(DEV, *args), activation="Relu", config=config, **attrs).cpu()
    assert int((want != 0).sum()) > 0 and torch.equal(got, want) and _counters_zero()


@pytest.mark.parametrize("config", [STREAM_K, SPLIT_K], ids=["stream-k", "split-k"])
def test_fp8_pieces_agree_with_whole_tiles_and_repeat_bit_for_bit(config):
    """Random fp8 operands (inexact sums): the split tiles' output within one float8 step of the
    unsplit persistent kernel's in few elements, and the same bits on every launch."""
    if DEV == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 tensor cores need compute capability 8.9")
    xs, ws, attrs = SHAPES["three_tiles"]
    g = torch.Generator().manual_seed(14)
    x = _channels_last((torch.randn(xs, generator=g) * 8).to(F8))
    w = (torch.randn(ws, generator=g) * 8).to(F8)
    args = (x, w, torch.tensor(0.01), None, torch.rand(ws[0], generator=g) * 0.01 + 0.001, None,
            torch.randn(ws[0], generator=g), None, torch.tensor(0.05), None)
    extra = {"activation": "Relu", "out_dtype": 17, **attrs}
    whole = tq.qconv(*_to(DEV, *args), config={**STREAM_K, "STREAM_K": 0, "PERSISTENT": 1}, **extra)
    runs = [tq.qconv(*_to(DEV, *args), config=config, **extra) for _ in range(3)]
    bits = [r.view(torch.uint8) for r in runs]
    assert all(torch.equal(b_, bits[0]) for b_ in bits[1:])
    diff = (runs[0].float() - whole.float()).abs()
    step = whole.float().abs() / 8 + 2 ** -9           # one e4m3 step at that magnitude, at most
    assert bool((diff <= step).all()) and int((diff > 0).sum()) <= max(1, diff.numel() // 100)


def test_split_k_divides_the_steps():
    assert [sk.split_k(36, w) for w in (1, 2, 3, 4, 5, 8)] == [1, 2, 3, 4, 4, 6]
    assert sk.split_k(7, 4) == 1 and sk.split_k(18, 4) == 3 and sk.split_k(16, 0) == 1


def test_share_arithmetic_covers_every_iteration_once():
    """share_start / owner as the kernel computes them (Python integers): shares tile [0, iters)
    without gaps, owner(it) holds it, and no tile has more pieces than the workspace's two slots per
    program can hold."""
    for tiles, k_steps, programs in ((1, 9, 4), (3, 18, 4), (100, 36, 132), (196, 18, 132), (7, 1, 7)):
        iters = tiles * k_steps
        assert programs == sk.stream_k_programs(tiles, k_steps, programs) or programs > iters
        starts = [p * iters // programs for p in range(programs + 1)]
        assert starts[0] == 0 and starts[-1] == iters and all(a < b for a, b in zip(starts, starts[1:]))
        for it in range(iters):
            p = ((it + 1) * programs + iters - 1) // iters - 1
            assert starts[p] <= it < starts[p + 1]
        for p in range(programs):   # a share holds at most two split pieces: the one it starts in, the one it ends in
            first, last = starts[p] // k_steps, (starts[p + 1] - 1) // k_steps
            split = [t for t in range(first, last + 1)
                     if not (starts[p] <= t * k_steps and (t + 1) * k_steps <= starts[p + 1])]
            assert len(split) <= 2 and all(t in (first, last) for t in split)

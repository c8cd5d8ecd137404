"""The framing copy of the implicit-GEMM conv's ROWS walk (kernels/triton/frame.py) against torch:
zeros, then X copied into the interior. Interpreted on CPU, compiled with `--device cuda`."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.triton import available

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton.frame import frame  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8, torch.float8_e4m3fn]


def _oracle(x: torch.Tensor, pixel: int, hp: int, wp: int, ph: int, pw: int) -> torch.Tensor:
    n, c, h, w = x.shape
    bits = torch.uint8 if x.element_size() == 1 else x.dtype
    out = torch.zeros((n, hp, wp, pixel), dtype=bits, device=x.device).permute(0, 3, 1, 2)
    out[:, :c, ph:ph + h, pw:pw + w].copy_(x.view(bits))
    return out


def _x(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, shape, generator=gen).to(torch.float32)
    if dtype == torch.uint8:
        x = x.abs()
    x = x.to(dtype).to(DEV)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "slice":   # every other column of a wider tensor: no dense layout at all
        wide = torch.zeros((*shape[:3], 2 * shape[3]), dtype=dtype, device=DEV)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice"])
def test_frame_matches_zeros_then_copy(dtype, layout):
    x = _x((2, 3, 5, 7), dtype, layout)
    got = frame(x, 4, 5 + 3 + 2, 7 + 1 + 4, 3, 1)   # frame 3 above, 2 below, 1 left, 4 right
    want = _oracle(x, 4, 10, 12, 3, 1)
    assert got.dtype == x.dtype and got.shape == (2, 4, 10, 12)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.view(want.dtype), want)


@pytest.mark.parametrize("shape, pixel, hp, wp, ph, pw", [
    ((1, 1, 1, 1), 4, 1, 1, 0, 0),          # no frame at all
    ((2, 4, 3, 3), 4, 3, 5, 0, 2),          # pixel == C, columns framed only
    ((1, 3, 40, 300), 8, 42, 302, 1, 1),    # rows longer than one program's BLOCK
    ((0, 3, 4, 4), 4, 6, 6, 1, 1),          # empty batch
])
def test_frame_geometries(shape, pixel, hp, wp, ph, pw):
    x = _x(shape, torch.float16, "nchw")
    assert torch.equal(frame(x, pixel, hp, wp, ph, pw), _oracle(x, pixel, hp, wp, ph, pw))


@pytest.mark.parametrize("fold", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.int8], ids=str)
def test_fold_is_the_frame_space_to_depth(fold, dtype):
    """fold S: framed pixel (hp, wp) at pixel (hp // S, wp // S), block position (hp % S, wp % S);
    X's rows and columns past the frame left out (here the last row and column)."""
    x = _x((2, 3, 9, 11), dtype, "nchw")
    hp, wp = 2 * fold * 2, 3 * fold * 2          # frame 1 above, 2 left; both may crop X
    got = frame(x, 4, hp, wp, 1, 2, fold=fold)
    full = _oracle(x, 4, max(hp, 1 + 9), max(wp, 2 + 11), 1, 2)[:, :, :hp, :wp]     # [N, 4, hp, wp]
    want = full.permute(0, 2, 3, 1).reshape(2, hp // fold, fold, wp // fold, fold, 4)
    want = want.permute(0, 1, 3, 2, 4, 5).reshape(2, hp // fold, wp // fold, fold * fold * 4)
    assert got.shape == (2, fold * fold * 4, hp // fold, wp // fold)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.permute(0, 2, 3, 1).view(want.dtype), want)


@pytest.mark.parametrize("fold", [1, 2])
@pytest.mark.parametrize("xtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("out, code", [(torch.int8, 3), (torch.float8_e4m3fn, 17)], ids=["int8", "fp8"])
def test_quantizing_frame_is_quantize_linear_then_frame(out, code, xtype, fold):
    """quantize=(scale, zero point, type): QuantizeLinear's codes bit for bit, the frame and the zero
    channels holding the code of 0."""
    from kiln.kernels.reference.quantize import quantize_linear

    gen = torch.Generator().manual_seed(3)
    x = (torch.randn((2, 3, 9, 11), generator=gen) * 4).to(xtype)
    x[0, 0, 0, :3] = torch.tensor([0.5, -0.5, 1.5]) * 0.037          # ties, rounded to even
    x = x.to(DEV)
    scale = torch.tensor(0.037, dtype=xtype, device=DEV)
    zp = torch.zeros((), dtype=torch.int8, device=DEV) if out == torch.int8 else None
    got = frame(x, 4, 12, 16, 1, 2, fold=fold, quantize=(scale, zp, out))
    want = frame(quantize_linear(x.cpu(), scale.cpu(), None if zp is None else zp.cpu(), output_dtype=code).to(DEV),
                 4, 12, 16, 1, 2, fold=fold)
    assert got.dtype == out and torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("fold", [1, 2])
@pytest.mark.parametrize("dtype, code", [(torch.uint8, 200), (torch.int8, -7)], ids=["uint8", "int8"])
def test_fill_frames_with_the_zero_point(dtype, code, fold):
    """fill: the frame and the channels past C hold its value (an 8-bit X's zero point), X's pixels
    as they are."""
    x = _x((2, 3, 5, 7), dtype, "nchw")
    fill = torch.tensor(code, dtype=dtype, device=DEV)
    got = frame(x, 4, 8, 12, 2, 3, fold=fold, fill=fill)
    zeros = frame(x, 4, 8, 12, 2, 3, fold=fold)
    inside = frame(torch.ones_like(x), 4, 8, 12, 2, 3, fold=fold) != 0       # where X's pixels land
    assert torch.equal(got[inside], zeros[inside])
    assert bool((got[~inside] == code).all()) and int((~inside).sum()) > 0


def test_fill_is_refused_with_quantize_or_a_wider_x():
    x = _x((1, 3, 4, 4), torch.float16, "nchw")
    with pytest.raises(AssertionError, match="fill"):
        frame(x, 4, 6, 6, 1, 1, fill=torch.tensor(1.0, dtype=torch.float16, device=DEV))

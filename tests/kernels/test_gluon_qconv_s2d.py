"""The stem on the Gluon conv (kernels/gluon/qconv_s2d.py) and its tactic: which convs the tactic
takes, what the launcher hands the kernel after the framing copy (which runs here, in Triton's
interpreter) and, on a Hopper GPU, that its codes are the reference kiln::QConv's."""
from __future__ import annotations

import os

import pytest
import torch
from onnx import TensorProto

from kiln.compiler.tolerance import mismatch
from kiln.kernels import gluon

if not gluon.available():
    pytest.skip("this Triton has no Gluon with the Hopper APIs", allow_module_level=True)

from kiln.kernels.gluon import qconv as g  # noqa: E402
from kiln.kernels.gluon import qconv_s2d as s2d  # noqa: E402
from kiln.kernels.reference.quantize import quantize_linear  # noqa: E402
from kiln.kernels.reference.quantized import qconv as reference_qconv  # noqa: E402
from kiln.tactics import quantized_conv_gluon as tactic  # noqa: E402
from kiln.tactics.registry import TacticQuery  # noqa: E402

F8, I8 = torch.float8_e4m3fn, torch.int8
CODE = {"int8": TensorProto.INT8, "float8_e4m3fn": TensorProto.FLOAT8E4M3FN, "uint8": TensorProto.UINT8}
STEM = {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]}


def _query(t="int8", x="float32", x_dtype=None, w_shape=(64, 3, 7, 7), residual=None, activation="Relu", **attrs):
    """kiln::QConv's query for ResNet-50's stem: a float32 input quantized by the conv (x_dtype)."""
    oc = w_shape[0]
    dts = [x, t, "float16", None, "float32", None, "float32", residual, "float32", None,
           "float32" if residual else None, None, "float32"]
    shapes = [(64, w_shape[1], 224, 224), w_shape, (), None, (oc,), None, (oc,),
              (64, oc, 112, 112) if residual else None, (), None, () if residual else None, None, ()]
    attrs = {**STEM, **attrs}
    return TacticQuery("kiln::QConv", "cuda", tuple(dts),
                       {"activation": activation, "out_dtype": CODE[t], "x_dtype": CODE[x_dtype or t], **attrs},
                       tuple(shapes), layout="nhwc")


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(tactic, "device_capability", lambda: (9, 0))


@pytest.mark.parametrize("t", ["int8", "float8_e4m3fn"])
def test_takes_the_stem(hopper, t):
    assert tactic.supports_s2d(_query(t))
    assert tactic.supports_s2d(_query(t, x="float16", activation=""))
    assert not tactic.supports(_query(t))                   # the stride-1 tactic does not


@pytest.mark.parametrize("why, query", [
    ("stride 1 (does not fold)", _query(strides=[1, 1])),
    ("many channels (does not fold)", _query(w_shape=(64, 64, 7, 7))),
    ("uint8 X", _query(x_dtype="uint8")),
    ("a float residual", _query(residual="float32")),
    ("Gelu", _query(activation="Gelu")),
    ("OC not a multiple of 16", _query(w_shape=(40, 3, 7, 7))),
])
def test_refuses(hopper, why, query):
    assert not tactic.supports_s2d(query), why


def test_needs_hopper(monkeypatch):
    monkeypatch.setattr(tactic, "device_capability", lambda: (8, 9))
    assert not tactic.supports_s2d(_query())


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid, args, kw))


def _stem_operands(dtype, n=2, hw=16, oc=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, hw, hw), generator=gen)
    v = torch.randint(-100, 101, (oc, 3, 7, 7), generator=gen).float()
    w = ((v / 4).to(F8) if dtype == F8 else v.to(I8)).contiguous(memory_format=torch.channels_last)
    xs = torch.tensor(0.03)
    ops = (x, w, xs, None, torch.rand(oc, generator=gen) * 0.01 + 0.001, None, torch.randn(oc, generator=gen),
           None, torch.tensor(0.1), None, None, None, xs)
    return ops, {"out_dtype": CODE[str(dtype)[6:]], "x_dtype": CODE[str(dtype)[6:]], **STEM}


@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
def test_launcher_hands_the_kernel_the_folded_view(monkeypatch, dtype):
    """The framing copy quantizes and folds X (16-byte pixels: 3 channels + 1 zero, 2 x 2); the
    kernel gets a 4 x 1 conv over the view of overlapping pixels, 64 bytes read from each 16."""
    rec = _Recorder()
    monkeypatch.setattr(g, "conv_kernel", rec)
    ops, attrs = _stem_operands(dtype)
    on = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"     # where the framing copy runs
    ops = tuple(t.to(on) if isinstance(t, torch.Tensor) else t for t in ops)
    y = s2d.qconv_s2d(*ops, activation="Relu", config=s2d.S2D_CONFIGS[0], **attrs)
    assert y.shape == (2, 64, 8, 8) and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    args, kw = rec.calls[0][1], rec.calls[0][2]
    a_desc, w_desc, r_desc, y_desc, ni, oh, ow, oc, c, kw_, ph, pw, ksteps = args[:13]
    hs, ws = 8 + 4 - 1, 8 + 4 - 1                       # folded rows and columns: OH + KH' - 1, OW + KW' - 1
    assert (ni, oh, ow, oc, c, kw_, ph, pw, ksteps) == (2, 8, 8, 64, 64, 1, 0, 0, 4)
    assert list(a_desc.shape) == [2, hs, 8, 64] and list(a_desc.strides) == [hs * ws * 16, ws * 16, 16, 1]
    assert list(w_desc.shape) == [64, 4 * 64] and not kw["HAS_RES"] and kw["RELU"]
    # the folded buffer: X's codes (QuantizeLinear's) at (2i + dy - 3, 2j + dx - 3), zeros elsewhere
    folded = a_desc.base.as_strided((2, hs, ws, 16), (hs * ws * 16, ws * 16, 16, 1)).cpu()
    q = quantize_linear(ops[0].cpu(), ops[12].cpu(), None, output_dtype=attrs["x_dtype"])
    framed = torch.zeros((2, 4, 2 * hs, 2 * ws), dtype=dtype)
    framed[:, :3, 3:19, 3:19] = q
    want = framed.reshape(2, 4, hs, 2, ws, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, hs, ws, 16)
    assert torch.equal(folded.view(torch.uint8), want.view(torch.uint8))


def test_launcher_refusals():
    ops, attrs = _stem_operands(I8)
    with pytest.raises(ValueError, match="a float X quantized to W's type"):
        s2d.qconv_s2d(*ops, **{**attrs, "x_dtype": TensorProto.UINT8})
    with pytest.raises(ValueError, match="x_zp must be 0"):
        s2d.qconv_s2d(*ops[:3], torch.tensor(3, dtype=I8), *ops[4:], **attrs)
    with pytest.raises(ValueError, match="space to depth"):
        s2d.qconv_s2d(*ops, **{**attrs, "strides": [1, 1], "pads": [3, 3, 3, 3]})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [I8, F8], ids=["int8", "fp8"])
@pytest.mark.parametrize("hw", [32, 37])
def test_codes_are_the_reference_within_a_step(dtype, hw):
    """Every config against the reference kiln::QConv on a stem over 32x32 and 37x37 images (an odd
    size: the frame's last folded row and column half padding): int8 within one code and 99%
    identical, float8 as the tuner judges it (compiler/tolerance.py)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("Hopper's TMA and warp-group MMA")
    ops, attrs = _stem_operands(dtype, hw=hw, seed=4)
    want = reference_qconv(*ops, activation="Relu", **attrs)
    dev = [t.cuda() if isinstance(t, torch.Tensor) else t for t in ops]
    for cfg in s2d.S2D_CONFIGS:
        got = s2d.qconv_s2d(*dev, activation="Relu", config=cfg, **attrs).cpu()
        if dtype == F8:
            assert mismatch(got, want, "kiln::QConv") is None, cfg
            continue
        diff = (got.int() - want.int()).abs()
        assert int(diff.max()) <= 1 and float((diff == 0).float().mean()) > 0.99, cfg

"""The channels-last cuDNN conv tactics against the reference kiln::FusedConv / Conv (the oracles).

CPU tests run the same kernel on CPU tensors (channels_last convolution works there too);
the gpu tests cover the tactic's domain on CUDA: fp16/bf16/fp32, both epilogue configs."""
from __future__ import annotations


import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.tactics import TacticQuery, candidates, get_tactic
from kiln.tactics.conv import CONFIGS, cached_weights, _channels_last_weight, supports_nhwc

FUSED = "kiln::FusedConv"

# (x shape, w shape, attrs, residual?, activation, params)
CASES = [
    ((2, 3, 9, 7), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1]), False, "", ()),
    ((2, 3, 9, 7), (4, 3, 3, 3), dict(pads=[0, 1, 1, 2], strides=[2, 1]), True, "Relu", ()),
    ((1, 4, 8, 8), (6, 2, 3, 3), dict(group=2, dilations=[2, 2], pads=[2, 2, 2, 2]), False, "LeakyRelu", (0.1,)),
    ((1, 5, 7, 6), (5, 1, 3, 3), dict(group=5, auto_pad="SAME_UPPER", strides=[2, 2]), True, "Silu", ()),
    ((3, 8, 5, 5), (16, 8, 1, 1), dict(), True, "Clip", (0.0, 6.0)),
    ((1, 3, 6, 6), (2, 3, 2, 2), dict(auto_pad="SAME_LOWER"), False, "HardSwish", ()),
]


def _inputs(case, dtype=torch.float32, device="cpu", seed=0):
    xs, ws, attrs, res, act, params = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g)
    w = torch.randn(ws, generator=g) * 0.3
    b = torch.randn(ws[0], generator=g)
    ref_y = lookup("Conv").fn(x, w, b, **attrs)
    r = torch.randn(ref_y.shape, generator=g) if res else None
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    kwargs = dict(attrs, activation=act, activation_params=params)
    return cast(x), cast(w), cast(b), cast(r), kwargs


def _reference(x, w, b, r, kwargs):
    return lookup(FUSED).fn(x, w, b, r, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c[4] or "plain" for c in CASES])
@pytest.mark.parametrize("config", CONFIGS, ids=[c["epilogue"] for c in CONFIGS])
def test_fused_conv_nhwc_matches_reference_on_cpu(case, config):
    x, w, b, r, kwargs = _inputs(case)
    want = _reference(x, w, b, r, kwargs)
    got = get_tactic(f"{FUSED}.cudnn_nhwc").kernel(x, w, b, r, **kwargs, config=config)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_plain_conv_and_channels_last_input_on_cpu():
    x, w, b, _, kwargs = _inputs(CASES[1])
    attrs = {k: v for k, v in kwargs.items() if not k.startswith("activation")}
    want = lookup("Conv").fn(x, w, b, **attrs)
    kernel = get_tactic("Conv.cudnn_nhwc").kernel
    torch.testing.assert_close(kernel(x, w, b, **attrs), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kernel(x.contiguous(memory_format=torch.channels_last), w, None, **attrs),
                               lookup("Conv").fn(x, w, None, **attrs), rtol=1e-4, atol=1e-4)


def test_not_4d_goes_to_the_reference():
    x, w = torch.randn(1, 2, 9), torch.randn(3, 2, 3)
    got = get_tactic(f"{FUSED}.cudnn_nhwc").kernel(x, w, None, None, pads=[1, 1], activation="Relu")
    torch.testing.assert_close(got, _reference(x, w, None, None, dict(pads=[1, 1], activation="Relu")))


def test_weight_is_converted_once_per_tensor():
    w = torch.randn(8, 4, 3, 3)
    first = _channels_last_weight(w)
    assert first.is_contiguous(memory_format=torch.channels_last) and _channels_last_weight(w) is first
    w.mul_(2)                                   # in place: the memo notices the new version
    again = _channels_last_weight(w)
    assert again is not first and torch.equal(again, w)
    one_by_one = torch.randn(8, 4, 1, 1)        # already channels-last-contiguous: no copy kept
    size = cached_weights()
    assert _channels_last_weight(one_by_one) is one_by_one and cached_weights() == size
    del w, first, again
    import gc
    gc.collect()
    assert cached_weights() == size - 1


def _query(dtypes=("float16",) * 3, shapes=(), device="cuda", layout="nhwc", **attrs):
    return TacticQuery(FUSED, device, dtypes, dict(attrs), shapes, layout)


def test_supports_the_2d_float_cuda_domain_only():
    assert supports_nhwc(_query(kernel_shape=[3, 3]))
    assert supports_nhwc(_query(("float32",) * 2, shapes=((1, 3, 8, 8), (4, 3, 3, 3))))
    assert supports_nhwc(_query(("bfloat16",) * 4, strides=[1, 1], pads=[0, 0, 1, 1], activation="Silu"))
    assert not supports_nhwc(_query(device="cpu", kernel_shape=[3, 3]))
    assert not supports_nhwc(_query(kernel_shape=[3]))                        # 1-D
    assert not supports_nhwc(_query(shapes=((1, 3, 4, 4, 4), (2, 3, 1, 1, 1))))  # 3-D
    assert not supports_nhwc(_query())                                      # unknown rank
    assert not supports_nhwc(_query(("int8",) * 2, kernel_shape=[3, 3]))
    assert not supports_nhwc(_query(("float16", "float32"), kernel_shape=[3, 3]))
    assert not supports_nhwc(_query(kernel_shape=[3, 3], activation="Softmax"))
    # The graph-level decision (passes/choose_layout.py):
    assert not supports_nhwc(_query(kernel_shape=[3, 3], layout="nchw"))


def test_is_the_first_cuda_candidate():
    found = [t.name for t in candidates(_query(kernel_shape=[3, 3]))]
    assert found[0] == f"{FUSED}.cudnn_nhwc" and found[-1] == f"{FUSED}.reference"
    found = [t.name for t in candidates(TacticQuery("Conv", "cuda", ("float32",) * 3, {"kernel_shape": [1, 1]},
                                                    layout="nhwc"))]
    assert found[0] == "Conv.cudnn_nhwc"
    assert "Conv.cudnn_nhwc" not in [t.name for t in candidates(
        TacticQuery("Conv", "cpu", ("float32",) * 3, {"kernel_shape": [1, 1]}, layout="nhwc"))]
    assert "Conv.cudnn_nhwc" not in [t.name for t in candidates(
        TacticQuery("Conv", "cuda", ("float32",) * 3, {"kernel_shape": [1, 1]}))]  # nchw graph


TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 1e-4}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=[c["epilogue"] for c in CONFIGS])
@pytest.mark.parametrize("case", CASES + [
    ((4, 64, 28, 28), (64, 64, 3, 3), dict(pads=[1, 1, 1, 1]), True, "Relu", ()),
    ((2, 64, 56, 56), (256, 64, 1, 1), dict(), False, "Relu", ()),
    ((2, 3, 33, 31), (16, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), False, "Relu", ()),
], ids=lambda c: f"{c[0]}x{c[1]}-{c[4] or 'plain'}" if isinstance(c, tuple) else None)
def test_fused_conv_nhwc_on_gpu(case, config, dtype):
    x, w, b, r, kwargs = _inputs(case, dtype, "cuda")
    # Oracle: the reference op in fp64 on the same (rounded) inputs.
    up = (lambda t: None if t is None else t.double())
    want = _reference(up(x), up(w), up(b), up(r), kwargs)
    # fp32 is compared at fp32 accuracy: TF32 off for this test (the tactic follows the process flag).
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = get_tactic(f"{FUSED}.cudnn_nhwc").kernel(x, w, b, r, **kwargs, config=config)
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.double(), want, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.gpu
def test_output_region_stays_channels_last_on_gpu():
    """Two convs in a row: the second reads the first's channels-last output without a copy."""
    x, w, b, _, kwargs = _inputs(CASES[0], torch.float16, "cuda")
    kernel = get_tactic(f"{FUSED}.cudnn_nhwc").kernel
    y = kernel(x, w, b, None, **kwargs)
    z = torch.relu(y)                                       # element-wise ops keep the format
    assert z.is_contiguous(memory_format=torch.channels_last)
    w2 = torch.randn(5, 4, 3, 3, device="cuda", dtype=torch.float16)
    out = kernel(z, w2, None, None, pads=[1, 1, 1, 1], activation="Relu")
    want = _reference(z.float(), w2.float(), None, None, dict(pads=[1, 1, 1, 1], activation="Relu"))
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)

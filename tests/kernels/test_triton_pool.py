"""The Triton MaxPool (kernels/triton/pool.py) against the reference (pooling.max_pool).

CPU: Triton's interpreter on small shapes; the same tests run compiled with `pytest --device cuda`.
ResNet's stem pool (3x3, stride 2, pad 1), ceil mode, dilation, asymmetric and SAME pads, both
memory formats in and out, every type it claims (fp32, fp16, bf16, int8, uint8, float8 e4m3fn
with negative zeros, NaN and the extremes), NaN propagation, every tuning config; the tactic's
support rules. GPU (marked): ResNet-50's stem pool shape, every config."""
from __future__ import annotations

import pytest
import torch

from kiln.kernels.reference import lookup
from kiln.kernels.triton import available as triton_available
from kiln.tactics.registry import TacticQuery, get_tactic

REF = lookup("MaxPool").fn
DEV = "cuda" if torch.cuda.is_available() else "cpu"

if triton_available():
    from kiln.kernels.triton import pool as tp
else:
    tp = None
pytestmark = pytest.mark.skipif(tp is None, reason="Triton is not installed")

STEM = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}


def _x(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    if dtype == torch.float8_e4m3fn:   # every bit pattern but NaN, so -0, subnormals and +-448 appear
        bits = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        bits[(bits & 0x7F) == 0x7F] = 0x80
        return bits.view(torch.float8_e4m3fn)
    return (torch.randn(shape, generator=g) * 4).to(dtype)


def _same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.float8_e4m3fn:   # value for value: -0 equals +0, NaN where the reference has NaN
        g, w = got.float(), want.float()
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        assert torch.equal(g[~torch.isnan(w)], w[~torch.isnan(w)])
    elif want.dtype.is_floating_point:
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(got[~torch.isnan(want)], want[~torch.isnan(want)])
    else:
        assert torch.equal(got, want)


def _check(x, channels_last=True, config=None, **attrs):
    want = REF(x, **attrs)[0]
    xd = x.to(DEV)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    got = tp.max_pool2d(xd, config=config or {"BLOCK_P": 16, "BLOCK_C": 16, "num_warps": 4}, **attrs)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _same(got.cpu(), want)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
                                   torch.float8_e4m3fn])
@pytest.mark.parametrize("channels_last", [True, False])
def test_stem_pool_every_type_both_formats(dtype, channels_last):
    _check(_x((2, 24, 13, 11), dtype), channels_last, **STEM)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [0, 1, 2, 0]},
    {"kernel_shape": [3, 3], "dilations": [2, 1], "pads": [2, 1, 2, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [5, 5], "auto_pad": "SAME_LOWER"},
    {"kernel_shape": [1, 1], "strides": [3, 2]},
])
def test_geometry(attrs):
    _check(_x((1, 5, 10, 9), torch.float16, seed=1), **attrs)
    _check(_x((1, 5, 10, 9), torch.int8, seed=2), **attrs)


def test_nan_propagates():
    x = _x((1, 8, 6, 6), torch.float32)
    x[0, 3, 2, 2] = float("nan")
    got = _check(x, **STEM).cpu()
    assert torch.isnan(got[0, 3, 1, 1]) and not torch.isnan(got[0, 2]).any()
    bits = torch.zeros(1, 4, 4, 4, dtype=torch.uint8)
    bits[0, 1, 0, 0] = 0xFF                                            # a negative-signed NaN still wins
    got = _check(bits.view(torch.float8_e4m3fn), kernel_shape=[2, 2], strides=[2, 2]).cpu()
    assert torch.isnan(got.float()[0, 1, 0, 0])


def test_float8_order_across_signs():
    values = torch.tensor([-448.0, -1.0, -0.0, 0.0, 2.0 ** -9, 0.5, 448.0])
    for i in range(len(values)):
        for j in range(len(values)):
            x = torch.stack([values[i], values[j]]).reshape(1, 1, 1, 2).to(torch.float8_e4m3fn)
            got = _check(x, kernel_shape=[1, 2])
            assert got.float().item() == max(values[i].item(), values[j].item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8, torch.uint8, torch.float8_e4m3fn])
@pytest.mark.parametrize("config", list(tp.CONFIGS) if tp is not None else [])
def test_every_config(config, dtype):
    _check(_x((2, 72, 9, 9), dtype, seed=3), config=dict(config), **STEM)


def test_refusals():
    with pytest.raises(AssertionError, match="pools 2-D"):
        tp.max_pool2d(torch.zeros(1, 2, 8, device=DEV), kernel_shape=[2])
    with pytest.raises(AssertionError, match="takes"):
        tp.max_pool2d(torch.zeros(1, 2, 8, 8, dtype=torch.int32, device=DEV), kernel_shape=[2, 2])
    with pytest.raises(AssertionError, match="unrolls windows of up to 64"):
        tp.max_pool2d(torch.zeros(1, 2, 9, 9, device=DEV), kernel_shape=[9, 9])


def test_tactic_support_rules():
    t = get_tactic("MaxPool.triton")

    def q(dtype="float16", k=(3, 3), device="cuda", n_outputs=1):
        return TacticQuery("MaxPool", device, (dtype,), {"kernel_shape": list(k)}, n_outputs=n_outputs)

    assert t.supports(q()) and t.supports(q("int8")) and t.supports(q("float8_e4m3fn"))
    assert not t.supports(q(device="cpu"))
    assert not t.supports(q(n_outputs=2))           # Indices: the reference
    assert not t.supports(q("float64")) and not t.supports(q("int32"))
    assert not t.supports(q(k=(3,))) and not t.supports(q(k=(3, 3, 3))) and not t.supports(q(k=(9, 9)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.int8, torch.float8_e4m3fn])
def test_gpu_resnet_stem_shape_every_config(dtype):
    # the int8 kernel's first version agreed at the small shapes above and missed maxima here
    x = _x((4, 64, 112, 112), dtype, seed=4)
    for config in tp.CONFIGS:
        _check(x, config=dict(config), **STEM)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("path", [{"INT_KEYS": 0}, {"INT_KEYS": 1}, {"WORDS": 1}], ids=["float", "keys", "words"])
def test_integer_extremes_and_padding_only_windows(dtype, path):
    """The lowest and highest values win where they should, and a window inside the padding
    alone (pads wider than the kernel's reach) gives the type's lowest value, on every integer
    path (four channels: the words path takes them, each channel its own values)."""
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    plane = torch.tensor([[lo, lo, hi], [lo, 0, lo], [hi, lo, lo]], dtype=torch.int32)
    x = torch.stack([plane, plane.flip(0), plane.clamp(min=lo + 1), plane.clamp(max=hi - 1)]).to(dtype)[None]
    config = {"BLOCK_P": 16, "BLOCK_C": 16, "num_warps": 4, **path}
    got = _check(x, config=config, kernel_shape=[2, 2], pads=[3, 3, 3, 3], strides=[1, 1])
    assert int(got.min()) == lo and int(got.max()) == hi


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_words_every_byte_of_a_word_its_own_channel(dtype):
    """The words path (pool_words.py): in each word one channel holds the window's maximum at
    a different tap and the others hold values that would win in a neighbouring lane's byte (a
    lane's low byte never decides its high byte's maximum, nor the reverse)."""
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    x = torch.full((1, 8, 3, 3), lo, dtype=torch.int32)
    for c in range(8):
        x[0, c, c % 3, (c // 3) % 3] = hi - c
        x[0, c ^ 1, (c + 1) % 3, (c + 2) % 3] = max(lo + 1, hi - 7 - c)
    x = x.to(dtype)
    config = {"BLOCK_P": 16, "BLOCK_C": 16, "num_warps": 4, "WORDS": 1}
    got = _check(x, config=config, kernel_shape=[3, 3], strides=[1, 1])
    assert [int(v) for v in got.flatten()] == [hi - c for c in range(8)]


def test_words_only_where_they_apply():
    """Four channels a word needs a dense channels-last 8-bit X with C a multiple of 4 at an
    aligned address; any other X (those below) pools on the byte path, to the same result."""
    from kiln.kernels.triton.pool_words import words_apply
    x = _x((2, 12, 7, 7), torch.int8, seed=5)
    assert words_apply(x.contiguous(memory_format=torch.channels_last))
    others = [x, _x((2, 6, 7, 7), torch.int8).contiguous(memory_format=torch.channels_last),
              x.half().contiguous(memory_format=torch.channels_last),
              torch.empty(2 * 12 * 49 + 1, dtype=torch.int8)[1:].view(2, 7, 7, 12).permute(0, 3, 1, 2)]
    assert not any(words_apply(o) for o in others)
    config = {"BLOCK_P": 16, "BLOCK_C": 16, "num_warps": 4, "WORDS": 1}
    _check(x, channels_last=False, config=config, **STEM)
    _check(others[1], config=config, **STEM)

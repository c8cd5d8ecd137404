"""The Triton fp16/bf16 convolution (kernels/triton/conv.py: qconv.py's kernel with 16-bit operands)
against the reference kiln::FusedConv, and its tactic's domain (tactics/conv_triton.py).

CPU: interpreted at tiny shapes and tiles (tiles the GPU compiles too: BLOCK_K >= 32); every K
walk of the kernel. The reference computes in float32 from the same 16-bit inputs; the kernel's
output (float32 accumulation, one rounding) must agree within the 16-bit tolerance of
compiler/tolerance.py. GPU (marked): ResNet-50's stem shape under every config of the space."""
from __future__ import annotations

import pytest
import torch

from kiln.compiler.tolerance import mismatch
from kiln.kernels.reference import lookup
from kiln.kernels.triton import available
from kiln.tactics.registry import TacticQuery

if not available():
    pytest.skip("Triton is not installed", allow_module_level=True)

from kiln.kernels.triton import conv as tc  # noqa: E402
from kiln.kernels.triton import qconv_plan as plan  # noqa: E402
from kiln.tactics import conv_triton  # noqa: E402

REF = lookup("kiln::FusedConv").fn
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TINY = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
# (x shape, w shape, attributes, the K walk it takes): the walks the tactic is for, and a dense one.
GEOMETRIES = {
    "stem_c3": ((2, 3, 11, 11), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, plan.ROWS),
    "c5_s2_asym": ((2, 5, 10, 9), (16, 5, 3, 3), {"pads": [0, 2, 1, 0], "strides": [2, 3]}, plan.ROWS),
    "c16_in_place": ((1, 16, 7, 6), (24, 16, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, plan.ROWS),
    "c3_dil_w": ((2, 3, 8, 9), (16, 3, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, plan.TAPS),
    "c32_3x3": ((2, 32, 6, 6), (16, 32, 3, 3), {"pads": [1, 1, 1, 1]}, plan.TAPS),
}


def _case(xs, ws, dtype, seed=0, residual=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(xs, generator=g).to(dtype).to(DEV)
    w = (torch.randn(ws, generator=g) * 0.2).to(dtype).to(DEV)
    b = torch.randn(ws[0], generator=g).to(dtype).to(DEV)
    return x, w, b


def _reference(x, w, b, r, **attrs):
    """fused_conv in float32 from the 16-bit inputs, rounded once to their type."""
    f = (lambda t: None if t is None else t.float())
    return REF(f(x), f(w), f(b), f(r), **attrs).to(x.dtype)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_walk_matches_the_reference(name, dtype):
    if dtype == torch.bfloat16 and DEV == "cpu":
        pytest.skip("the interpreter's bfloat16 dot is wrong (test_matmul_tactics.py): bfloat16 on the GPU only")
    xs, ws, attrs, path = GEOMETRIES[name]
    x, w, b = _case(xs, ws, dtype)
    geo = plan.conv_geometry(xs, ws, **attrs)
    assert plan.k_loop(xs[1], geo, 32, True, xs[2], xs[3]).path == path
    got = tc.conv(x, w, b, None, activation="Relu", config=TINY, **attrs)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert mismatch(got, _reference(x, w, b, None, activation="Relu", **attrs), "kiln::FusedConv") is None


def test_residual_activation_nchw_input_and_output():
    xs, ws, attrs, _ = GEOMETRIES["stem_c3"]
    x, w, b = _case(xs, ws, torch.float16, seed=3)
    geo = plan.conv_geometry(xs, ws, **attrs)
    want_shape = (xs[0], ws[0], geo.oh, geo.ow)
    r = torch.randn(want_shape, generator=torch.Generator().manual_seed(4)).half().to(DEV)
    params = dict(activation="LeakyRelu", activation_params=[0.1])
    got = tc.conv(x, w, b, r, config=TINY, channels_last_out=False, **params, **attrs)
    assert got.is_contiguous() and tuple(got.shape) == want_shape
    assert mismatch(got, _reference(x, w, b, r, **params, **attrs), "kiln::FusedConv") is None
    no_bias = tc.conv(x, w, None, None, config=TINY, **attrs)          # plain Conv: no bias, no epilogue
    assert mismatch(no_bias, _reference(x, w, None, None, **attrs), "kiln::FusedConv") is None


def test_refuses_mixed_types():
    x, w, b = _case((1, 3, 8, 8), (16, 3, 3, 3), torch.float16)
    with pytest.raises(AssertionError, match="must both be float16 or both bfloat16"):
        tc.conv(x, w.float(), b, None, config=TINY)
    with pytest.raises(AssertionError, match="residual must be"):
        tc.conv(x, w, b, torch.zeros(1, 16, 6, 6, dtype=torch.float32, device=DEV), config=TINY)
    with pytest.raises(AssertionError, match="group 1 only"):
        tc.conv(x, w[:, :1].contiguous(), b, None, group=3, config=TINY)


def _query(c=3, dtype="float16", layout="nhwc", group=1, residual=None, bias_shape=(64,), **attrs):
    dts = [dtype, dtype, dtype if bias_shape else None] + ([residual] if residual else [])
    shapes = [(64, c, 224, 224), (64, c, 7, 7), bias_shape] + ([(64, 64, 112, 112)] if residual else [])
    return TacticQuery("kiln::FusedConv", "cuda", tuple(dts), {"group": group, **attrs}, tuple(shapes), layout)


def test_tactic_domain(monkeypatch):
    monkeypatch.setattr(conv_triton, "device_capability", lambda: (9, 0))
    assert conv_triton.supports(_query())
    assert conv_triton.supports(_query(dtype="bfloat16", residual="bfloat16", activation="Relu"))
    assert conv_triton.supports(_query(bias_shape=None))
    assert not conv_triton.supports(_query(c=64))                       # 32k channels: cuDNN's
    assert not conv_triton.supports(_query(dtype="float32"))            # fp32: cuDNN (no tf32 here)
    assert not conv_triton.supports(_query(layout="nchw"))
    assert not conv_triton.supports(_query(group=3))
    assert not conv_triton.supports(_query(residual="float32"))
    assert not conv_triton.supports(_query(bias_shape=(3,)))
    assert not conv_triton.supports(_query(activation="Softplus"))
    monkeypatch.setattr(conv_triton, "device_capability", lambda: (7, 5))
    assert not conv_triton.supports(_query())


def test_float_space_fits_shared_memory():
    for cfg in plan.FLOAT_CONFIGS:   # 2-byte operands: (BLOCK_M + BLOCK_N) * BLOCK_K * 2 per stage
        assert cfg["BLOCK_K"] >= 32 and (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * 2 * cfg["num_stages"] <= 200 * 1024


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_stem_every_config(dtype):
    attrs = {"pads": [3, 3, 3, 3], "strides": [2, 2]}
    x, w, b = _case((8, 3, 224, 224), (64, 3, 7, 7), dtype, seed=1)
    want = _reference(x, w, b, None, activation="Relu", **attrs)
    for cfg in plan.FLOAT_CONFIGS:
        got = tc.conv(x, w, b, None, activation="Relu", config=dict(cfg), **attrs)
        assert mismatch(got, want, "kiln::FusedConv") is None, cfg

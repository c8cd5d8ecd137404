"""Tactics kiln::FusedConv.triton and Conv.triton: fp16/bf16 convolutions over few input channels
through kiln's implicit-GEMM Triton kernel (kernels/triton/conv.py), beside cuDNN (tactics/conv.py).

Where it applies: 2-D, group 1, channels-last regions (layout "nhwc": the kernel writes
channels-last Y), X and W of one 16-bit float type (bias and a residual of that type too), any
activation of the fused vocabulary, and C (W's dim 1) not a multiple of 32: the walks that pack
a kernel row's taps (ROWS) or pad each tap's channels (TAPS), where cuDNN measured slow (ResNet's
stem, C = 3: kernels/triton/conv.py). Convolutions over 32k channels stay cuDNN's alone: its
kernels are the ones to beat there, and each added candidate costs build time on every layer.
Compute capability 8.0 on (bf16 tensor-core MMAs). The tuner times it against cuDNN per layer.
The folded walk (config S2D, kernels/triton/qconv_s2d.py) is not in its space: on the stem it
took 157.6 us against the ROWS walk's 145.0 us (benchmarks/kernels_stem.py, CUDA-graph timed, H200, 2026-11-28).
"""
from __future__ import annotations

from typing import Any

from kiln.kernels.reference.fused import ACTIVATIONS
from kiln.kernels.triton import available as triton_available
from kiln.tactics.quantized import device_capability
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

DTYPES = ("float16", "bfloat16")
X, W, BIAS, RESIDUAL = range(4)       # kiln::FusedConv's inputs (Conv: the first three)
MIN_CAPABILITY = (8, 0)
# The walks this tactic is for take C that is not a multiple of this (qconv_plan.k_loop).
DENSE_CHANNELS = 32


def _at(seq: tuple, i: int) -> Any:  # noqa: ANN401 - a dtype name or a shape
    return seq[i] if i < len(seq) else None


def supports(query: TacticQuery) -> bool:
    if query.device != "cuda" or query.layout != "nhwc":
        return False
    dts, shapes = tuple(query.input_dtypes), tuple(query.input_shapes)
    dtype = _at(dts, X)
    if dtype not in DTYPES or _at(dts, W) != dtype or any(_at(dts, i) not in (None, dtype) for i in (BIAS, RESIDUAL)):
        return False
    xs, ws = _at(shapes, X), _at(shapes, W)
    if xs is None or ws is None or len(xs) != 4 or len(ws) != 4 or int(query.attrs.get("group", 1)) != 1:
        return False
    oc, c = ws[0], ws[1]
    if not isinstance(c, int) or c <= 0 or c % DENSE_CHANNELS == 0 or (isinstance(xs[1], int) and xs[1] != c):
        return False
    bias = _at(shapes, BIAS)
    if _at(dts, BIAS) is not None and (bias is None or not (all(d == 1 for d in bias) or list(bias) == [oc])):
        return False
    res = _at(shapes, RESIDUAL)
    if _at(dts, RESIDUAL) is not None and (res is None or len(res) > 4):
        return False
    if query.attrs.get("activation", "") not in ACTIVATIONS:
        return False
    cap = device_capability()
    return cap is not None and cap >= MIN_CAPABILITY


if triton_available():
    from kiln.kernels.triton import conv as _triton_conv
    from kiln.kernels.triton.qconv_plan import FLOAT_CONFIGS

    register_tactic(Tactic("kiln::FusedConv.triton", "kiln::FusedConv", 1, ("cuda",), _triton_conv.conv, supports,
                           configs=FLOAT_CONFIGS))
    register_tactic(Tactic("Conv.triton", "Conv", 1, ("cuda",), _triton_conv.conv, supports, configs=FLOAT_CONFIGS))

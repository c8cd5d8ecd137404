"""fp16/bf16 2-D convolution in Triton: kiln::FusedConv through qconv.py's implicit-GEMM kernel.

The oracle is kiln::FusedConv (kernels/reference/fused.py): act(Conv(X, W) + bias + residual).
The kernel is the quantized convolution's (qconv.py: the three K walks, the channels-last
tile, the fused epilogue), given 16-bit float operands and unit scales: the tensor cores
multiply fp16 (bf16) tiles into a float32 accumulator, the epilogue adds bias and residual in
float32, applies the activation and rounds once to X's type. What it is for: convolutions
over few channels (ResNet's stem, C = 3), where the ROWS walk packs a kernel row's taps into
each K step (7 taps x 4 elements: 28 of every 32) rather than one 3-channel tap per step. At
ResNet-50's stem, batch 64, on the H200 (`benchmarks/kernels_stem.py`, three runs on 2026-11-27):
150-177 us at the 256x64x64 tiling, against cuDNN fp16's 355 us for conv2d + ReLU and 163-166 us
for cuDNN's fused conv+bias+ReLU, which the cuDNN tactic may take. The tuner times it against
cuDNN per layer. Its tuning space is qconv_plan.FLOAT_CONFIGS (K steps of at most 64: a 16-bit
stage holds twice an 8-bit one's bytes), whose first config qconv takes when none is given.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import torch

from kiln.kernels.triton.qconv import qconv

Tensor = torch.Tensor

DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _one(dtype: torch.dtype, device: torch.device) -> Tensor:
    """1.0 as a one-element tensor (the unit scales; X's type makes the output's), made once per type
    and device: on the first call, which the tuner's runs and the CUDA-graph runner's warm-up make
    before any capture (a tensor first made inside a capture would live in that graph's pool)."""
    return torch.ones(1, dtype=dtype, device=device)


def conv(x: Tensor, w: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, *,
         auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None, group: int = 1,
         kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
         strides: Sequence[int] | None = None, activation: str = "", activation_params: Sequence[float] = (),
         config: dict[str, Any] | None = None, channels_last_out: bool = True) -> Tensor:
    """act(Conv(X, W) + bias + residual) for X [N, C, H, W] and W [OC, C, KH, KW] of one 16-bit
    float type, group 1; Y channels-last (or NCHW if not channels_last_out), X's type."""
    assert x.dtype in DTYPES and w.dtype == x.dtype, f"X and W must both be float16 or both bfloat16, got {x.dtype}, {w.dtype}"
    assert residual is None or residual.dtype == x.dtype, f"the residual must be {x.dtype}, got {residual.dtype}"
    return qconv(x, w, _one(x.dtype, x.device), None, _one(torch.float32, x.device), None, bias, residual,
                 auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides, activation=activation, activation_params=activation_params,
                 config=config, channels_last_out=channels_last_out)

"""DynamicQuantizeLinear on the GPU: two Triton passes over X, the scale and zero point derived
on the device between them.

The oracle is the reference op (kernels/reference/quantize.py, ONNX's definition):

  hi = max(0, max X), lo = min(0, min X)
  y_scale = (hi - lo) / 255                (1 / 255 where hi == lo)
  y_zero_point = round_half_even(clamp(-lo / y_scale, 0, 255))
  Y = saturate(round_half_even(X / y_scale) + y_zero_point)          uint8

in float32 with correctly rounded divisions (torch's). The first pass writes each program's minimum
and maximum (PROGRAMS programs, each walking every PROGRAMS-th block); in the second each program
reduces those few partials itself (from L2), divides the two scalars with div_rn and its elements
with quantize.divide (from the reciprocal, exactly div_rn's quotient), and rounds as
quantize.requantize does, so Y, y_scale and y_zero_point equal the reference's bit for bit. y_scale
is stored in X's float type, as the reference stores it. Nothing is read on the host, so a CUDA
graph captures both launches. (torch.aminmax took 8-15 us for BERT-base b32's activations on an
H200, one reduction over a few programs.) ONNX Runtime's quantize_dynamic puts one before every
quantized MatMul (passes/integer_to_qdq.py); kiln::DynamicQuantize, the same with codes and zero
point less 128 as int8, where only int8 GEMMs read them (passes/signed_dynamic_codes.py).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.triton.quantize import PRECISIONS, _in_precision, divide, requantize, shifted_round
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor
# PROGRAMS: the first pass's programs (partials every program of the second reads).
CONFIGS: tuple[dict[str, int], ...] = ({"BLOCK": 2048, "num_warps": 4, "PROGRAMS": 264},
                                       {"BLOCK": 4096, "num_warps": 8, "PROGRAMS": 264},
                                       {"BLOCK": 2048, "num_warps": 4, "PROGRAMS": 528},
                                       {"BLOCK": 8192, "num_warps": 8, "PROGRAMS": 132})
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _range_kernel(X, PART, n, P, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """PART[pid] = min, PART[P + pid] = max of blocks pid, pid + P, ... of X."""
    wait_for_inputs(PDL)   # first: pdl.py's rule
    pid = tl.program_id(0)
    lo = tl.full((BLOCK,), float("inf"), tl.float32)
    hi = tl.full((BLOCK,), -float("inf"), tl.float32)
    for start in range(pid * BLOCK, n, P * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, tl.where(offs < n, x, float("inf")), propagate_nan=tl.PropagateNan.ALL)
        hi = tl.maximum(hi, tl.where(offs < n, x, -float("inf")), propagate_nan=tl.PropagateNan.ALL)
    tl.store(PART + pid, tl.min(lo, axis=0))
    tl.store(PART + P + pid, tl.max(hi, axis=0))


@triton.jit
def _dynamic_quantize_kernel(X, PART, P, Y, SCALE, ZP, n, PREC: tl.constexpr, SIGNED: tl.constexpr,
                             BLOCK: tl.constexpr, P_BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    parts = tl.arange(0, P_BLOCK)
    lo = tl.minimum(tl.min(tl.load(PART + parts, mask=parts < P, other=float("inf")), axis=0), 0.0)
    hi = tl.maximum(tl.max(tl.load(PART + P + parts, mask=parts < P, other=-float("inf")), axis=0), 0.0)
    s = tl.math.div_rn(tl.where(hi == lo, 1.0, hi - lo), 255.0)
    inv = tl.math.div_rn(1.0, s)
    # -lo / s lies in [0, 255] up to rounding: rounded half to even and clamped on the shifted bits
    zp = shifted_round(divide(-lo, s, inv), 0.0, 255.0).to(tl.int32, bitcast=True) - 0x4B400000
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if SIGNED:   # kiln::DynamicQuantize: code and zero point less 128, int8
        zp = zp - 128
        code = requantize(divide(x, s, inv), zp, True, False, -128, 127)
    else:
        code = requantize(divide(x, s, inv), zp, True, False, 0, 255)
    tl.store(Y + offs, code.to(Y.dtype.element_ty), mask=mask)
    if pid == 0:
        tl.store(SCALE, _in_precision(s, PREC).to(SCALE.dtype.element_ty))   # rounded to X's type
        tl.store(ZP, zp.to(ZP.dtype.element_ty))


def dynamic_quantize_linear(x: Tensor, *, config: dict[str, Any] | None = None,
                            signed: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(Y uint8 of X's shape, y_scale in X's type, y_zero_point uint8), both scalars: module docstring.
    `signed`: kiln::DynamicQuantize's int8 Y - 128 and y_zero_point - 128."""
    assert x.dtype in FLOATS, f"DynamicQuantizeLinear of {x.dtype}: float32, float16 or bfloat16"
    assert x.numel() < 2**31, "X of 2**31 elements or more overflows int32 offsets"
    cfg = dict(CONFIGS[0] if config is None else config)
    scale = torch.empty((), dtype=x.dtype, device=x.device)
    codes = torch.int8 if signed else torch.uint8
    zp = torch.empty((), dtype=codes, device=x.device)
    y = torch.empty(x.shape, dtype=codes, device=x.device)
    if x.numel() == 0:   # as the reference: the range [0, 0] gives 1 / 255 and zero point 0
        return y, scale.fill_(1.0 / 255.0), zp.fill_(-128 if signed else 0)
    xc, n, block = x.contiguous(), x.numel(), cfg["BLOCK"]
    programs = min(triton.cdiv(n, block), cfg["PROGRAMS"])
    part = torch.empty(2 * programs, dtype=torch.float32, device=x.device)
    _range_kernel[(programs,)](xc, part, n, programs, BLOCK=block, num_warps=cfg["num_warps"], **launch_options(xc))
    _dynamic_quantize_kernel[(triton.cdiv(n, block),)](
        xc, part, programs, y, scale, zp, n, PREC=PRECISIONS[x.dtype], SIGNED=signed, BLOCK=block,
        P_BLOCK=max(16, triton.next_power_of_2(programs)), num_warps=cfg["num_warps"], **launch_options(xc))
    return y, scale, zp


def signed_dynamic_quantize(x: Tensor, *, config: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """kiln::DynamicQuantize: DynamicQuantizeLinear's codes and zero point less 128, int8."""
    return dynamic_quantize_linear(x, config=config, signed=True)

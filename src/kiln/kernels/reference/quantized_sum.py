"""A residual add as ONNX Runtime's fully quantized models write it, read off a kiln::Pointwise program.

    DQ(a, sa, za) + DQ(b, sb, zb) -> QuantizeLinear(ss, zs) -> DequantizeLinear(ss, zs)

a and b are 8-bit codes (the output projection's and the residual stream's), the sum's codes are
dequantized again for the LayerNorm that reads them. kiln::NormQuantize takes such a program as
its `x_program` (kernels/reference/norm_quantize.py; precision/fuse_residual_norm.py folds the
Pointwise into the norm); its Triton kernel computes it from the constants read off here, op by
op as the reference rounds them (pointwise_ops' exact arithmetic). Any other program: None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kiln.ir import dtypes
from kiln.kernels.reference.quantize import division_scale

CODES = dtypes.CODE_NAMES
FLOATS = dtypes.FLOAT_NAMES


@dataclass(frozen=True, slots=True)
class QuantizedSum:
    """The program's constants, each as the kernel uses it (a scale rounded to the chain's float
    type, the sum's scale also to its division type, 1 / that in float32)."""
    float_type: str                  # the chain's float type (the scales'), the LayerNorm's input type
    code_types: tuple[str, str, str]   # a, b and the sum's codes
    a_scale: float
    a_zp: int
    b_scale: float
    b_zp: int
    sum_scale: float                 # in the division's type
    sum_inverse: float
    sum_zp: int
    sum_dq_scale: float              # the final DequantizeLinear's (the scale in the float type)
    division: str                    # the QuantizeLinear's division type


def _const(arg: Any, kinds: tuple[str, ...]) -> tuple[float, str] | None:
    if not isinstance(arg, dict) or arg.get("dtype") not in kinds or isinstance(arg.get("const"), (list, tuple)):
        return None
    return arg["const"], arg["dtype"]


def _dq(step: Any, source: str) -> tuple[float, str, int, str] | None:
    """(scale, float type, zero point, code type) of `DequantizeLinear(source, scale, zp)`."""
    op, args, attrs = step
    if op != "DequantizeLinear" or len(args) != 3 or args[0] != source:
        return None
    scale, zp = _const(args[1], FLOATS), _const(args[2], CODES)
    return None if scale is None or zp is None else (scale[0], scale[1], int(zp[0]), zp[1])


def _rounded(value: float, dtype: str) -> float:
    return float(torch.tensor(value, dtype=dtypes.from_name(dtype).torch).to(torch.float32))


def quantized_sum(program: Any) -> QuantizedSum | None:
    """The module docstring's form, or None."""
    if not isinstance(program, (list, tuple)) or len(program) != 5:
        return None
    a, b = _dq(program[0], "i0"), _dq(program[1], "i1")
    add, q, dq = program[2], program[3], program[4]
    if a is None or b is None or add[0] != "Add" or list(add[1]) not in (["t0", "t1"], ["t1", "t0"]):
        return None
    if q[0] != "QuantizeLinear" or len(q[1]) != 3 or q[1][0] != "t2":
        return None
    scale, zp = _const(q[1][1], FLOATS), _const(q[1][2], CODES)
    back = _dq(dq, "t3")
    fp = a[1]
    if scale is None or zp is None or back is None or not (fp == b[1] == scale[1] == back[1]):
        return None
    if back[0] != scale[0] or back[2] != int(zp[0]) or back[3] != zp[1]:
        return None
    out = int(q[2].get("output_dtype", 0) or 0)
    if out and dtypes.from_onnx(out).name != zp[1] or int(q[2].get("saturate", 1)) != 1:
        return None
    precision = int(q[2].get("precision", 0) or 0)
    division = dtypes.from_onnx(precision).name if precision else fp
    if division not in FLOATS:
        return None
    s, inv = division_scale(scale[0], dtypes.from_name(fp).torch, dtypes.from_name(division).torch)
    return QuantizedSum(fp, (a[3], b[3], zp[1]), _rounded(a[0], fp), a[2], _rounded(b[0], fp), b[2], s, inv,
                        int(zp[0]), _rounded(back[0], fp), division)

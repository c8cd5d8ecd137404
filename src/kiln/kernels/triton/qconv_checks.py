"""The Triton kiln::QConv launcher's contract (qconv.py): what it takes, checked before launching,
one assertion message per broken rule."""
from __future__ import annotations

import torch

from kiln.ir import dtypes
from kiln.kernels.memo import all_zero

Tensor = torch.Tensor

# X and W: the same one of these (16-bit floats: conv.py's float convolution, unit scales)
INPUT_DTYPES = (torch.int8, torch.float8_e4m3fn, torch.float16, torch.bfloat16)
FLOAT_OUTPUTS = (torch.float16, torch.bfloat16, torch.float32)
RESIDUAL_8BIT = (torch.int8, torch.uint8, torch.float8_e4m3fn)     # a residual with residual_scale
# Requantized output types (DType names) and the range each saturates to.
REQUANT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127), "uint8": (0, 255), "float8_e4m3fn": (-448, 448),
}


def require_zero(zp: Tensor | None, name: str) -> None:
    """Raise unless `zp` is absent or all zeros (read once per tensor: engine constants)."""
    if zp is None:
        return
    if not all_zero(zp):
        raise ValueError(f"the Triton kiln::QConv takes {name} absent or 0 (symmetric quantization); this one is "
                         "non-zero. The reference tactic computes it; quantize symmetrically to use this kernel.")


def check_operands(x: Tensor, w: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None, group: int,
                   out: dtypes.DType, requant: bool, x_type: torch.dtype) -> None:
    """The launcher's contract; x_type: X's type as the kernel reads it (a float X quantized first)."""
    assert (x_type in INPUT_DTYPES and w.dtype == x_type) or (x_type == torch.uint8 and w.dtype == torch.int8), \
        f"X and W must both be int8, float8_e4m3fn, float16 or bfloat16 (or X uint8, W int8), got {x_type}, {w.dtype}"
    assert x.dim() == 4 and w.dim() == 4, f"a 2-D conv: X and W are 4-D, got {tuple(x.shape)}, {tuple(w.shape)}"
    assert group == 1 and w.shape[1] == x.shape[1], f"group 1 only: X has {x.shape[1]} channels, W {w.shape[1]}"
    assert x_scale.numel() == 1 and x_scale.dtype in FLOAT_OUTPUTS, "x_scale: one float16/bfloat16/float32 value"
    assert w_scale.numel() in (1, w.shape[0]), f"w_scale must have 1 or {w.shape[0]} elements"
    assert bias is None or bias.numel() in (1, w.shape[0]), f"bias must have 1 or {w.shape[0]} elements"
    assert out.name in REQUANT_RANGES if requant else out.torch in FLOAT_OUTPUTS, f"cannot write a {out.name} output"
    assert x.numel() < 2**31 and w.numel() < 2**31, "operands of 2**31 elements or more overflow int32 offsets"


def check_residual(residual: Tensor | None, scale: Tensor | None, zp: Tensor | None) -> None:
    """A float residual without residual_scale, or an 8-bit one with it (and a zero point of its type)."""
    if scale is None:
        assert zp is None and (residual is None or residual.dtype in FLOAT_OUTPUTS), \
            "a residual without residual_scale is float16, bfloat16 or float32 (and has no residual_zp)"
        return
    got = None if residual is None else residual.dtype
    assert got in RESIDUAL_8BIT, f"a residual with residual_scale is int8, uint8 or float8_e4m3fn, got {got}"
    assert scale.numel() == 1 and scale.dtype in FLOAT_OUTPUTS, "residual_scale: one float16/bfloat16/float32 value"
    assert zp is None or (zp.numel() == 1 and zp.dtype == got), "residual_zp: one value of the residual's type"


def check_mid(scale: Tensor | None, zp: Tensor | None) -> None:
    """mid_scale (one float) with mid_zp absent (uint8 codes) or one int8/uint8 value."""
    if scale is None:
        assert zp is None, "mid_zp without mid_scale: give both or neither"
        return
    assert scale.numel() == 1 and scale.dtype in FLOAT_OUTPUTS, "mid_scale: one float16/bfloat16/float32 value"
    assert zp is None or (zp.numel() == 1 and zp.dtype in (torch.int8, torch.uint8)), \
        "mid_zp: one int8 or uint8 value (the conv's own codes)"

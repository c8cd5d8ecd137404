"""A Pointwise program's constants as kernel parameters, so that the kernel's source is the same
for every layer with the same structure.

An explicitly quantized model repeats one program per layer with other scales and zero points
(ONNX Runtime's QDQ BERT-base: ~9 programs per layer, 12 layers). With the constants written into
the source, each layer was a kernel of its own to compile and tune (hundreds of Triton compiles per
build); as parameters, the twelve layers share one compiled kernel per structure. A float constant
is passed as float32 (the type the kernel holds floats in; Triton passes a Python float as fp32),
an integer one as a Python int (int32, or int64 past its range, as a literal would be typed); booleans stay
literals. Values are first converted to the operand's type as torch would (an fp32 constant
multiplying fp16 is rounded to fp16), so that the kernel computes what the reference does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def float32(v: float) -> float:
    """v rounded to float32 (overflow to infinity, as torch rounds)."""
    with np.errstate(over="ignore"):
        return float(np.float32(v))


class Constants:
    """The parameters k0, k1, ... of one generated kernel, one per distinct value and kind."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, Any], str] = {}
        self.values: list[float | int] = []

    @property
    def names(self) -> list[str]:
        return [f"k{i}" for i in range(len(self.values))]

    def _param(self, key: tuple[str, Any], value: float | int) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = f"k{len(self.values)}"
            self.values.append(value)
        return name

    def float(self, v: float) -> str:
        """A float32 parameter holding v rounded to float32 (its bits tell -0.0 and NaNs apart)."""
        v = float32(v)
        bits = int(np.float32(v).view(np.uint32))
        return self._param(("f", bits), v if not math.isnan(v) else float("nan"))

    def of(self, value: Any, dtype: torch.dtype, target: torch.dtype) -> str:
        """A constant of `dtype` converted to `target` as torch would, as source: a parameter, or
        a literal for booleans."""
        v = torch.tensor(value, dtype=dtype).to(target).item()
        if target == torch.bool:
            return "True" if v else "False"
        if target in FLOATS:
            return self.float(float(v))
        return self._param(("i", int(v)), int(v))

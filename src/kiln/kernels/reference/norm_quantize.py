"""kiln::NormQuantize: a LayerNorm (with or without a residual add in front) and the
QuantizeLinear that reads its output, as one op.

  kiln::NormQuantize(X, Residual?, Scale, B?, y_scale, y_zero_point?)
      -> (Yq, [Y], [Sum])
  Sum = X + Residual in X's type (when Residual is given; kiln::AddLayerNorm's sum)
  Y   = LayerNormalization(Sum or X, Scale, B, axis, epsilon)    in X's type, float32 statistics
  Yq  = QuantizeLinear(Y, y_scale, y_zero_point, output_dtype, precision, saturate=1)
        y_scale (and y_zero_point) per tensor, or per channel of the last axis (axis=-1), which
        is then the normalised axis

Y is an output when `float_output` is 1 (other layers read it: a post-norm transformer's
next residual add), Sum when `sum_output` is 1 (a pre-norm transformer's residual stream);
Yq always comes first. With `x_program` (a kiln::Pointwise program over X and Residual: ONNX
Runtime's quantized residual add, kernels/reference/quantized_sum.py), X and Residual are the
add's 8-bit inputs and the program's output is the row normalised (no Sum;
precision/fuse_residual_norm.py folds the Pointwise in). The op is exactly the ops it replaces,
so the oracle is their references in sequence: fusing changes no reference value
(precision/fuse_norm_quantize.py makes it, after the engine's types are fixed). What it saves on the GPU is one pass: the norm kernel
rounds Y to X's type and quantizes it while the row is still in registers, instead of
writing Y for a QuantizeLinear kernel to read back.
"""
from __future__ import annotations

import torch

from kiln.kernels.reference.fused import pointwise
from kiln.kernels.reference.registry import lookup, reference_op

Tensor = torch.Tensor


@reference_op("NormQuantize", domain="kiln")
def norm_quantize(x: Tensor, residual: Tensor | None, scale: Tensor, b: Tensor | None, y_scale: Tensor,
                  y_zero_point: Tensor | None = None, *, axis: int = -1, epsilon: float = 1e-5,
                  output_dtype: int = 0, precision: int = 0, float_output: int = 0,
                  sum_output: int = 0, x_program: list | None = None) -> tuple[Tensor, ...]:
    """(Yq, [Y], [Sum]) as the module docstring defines them."""
    if x_program:
        x, residual = pointwise(x, residual, program=x_program), None
    s = x if residual is None else x + residual
    y = lookup("LayerNormalization").fn(s, scale, b, axis=axis, epsilon=epsilon)[0]
    yq = lookup("QuantizeLinear").fn(y, y_scale, y_zero_point, axis=-1, output_dtype=output_dtype,
                                     precision=precision)
    return (yq, *((y,) if float_output else ()), *((s,) if sum_output and residual is not None else ()))

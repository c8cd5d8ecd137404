"""kiln::MatMulQuantize: a float matmul with its fused epilogue and the QuantizeLinear that
reads its output, as one op.

  kiln::MatMulQuantize(A, B, bias?, residual?, y_scale, y_zero_point?) -> Yq
  Y  = kiln::FusedMatMul(A, B, bias, residual; trans_b, alpha, activation, activation_params)
       in A's type (float16 / bfloat16 / float32)
  Yq = QuantizeLinear(Y, y_scale, y_zero_point, output_dtype, precision, saturate=1),
       y_scale (and y_zero_point) per tensor or per channel of the last axis (axis=-1)

Where it comes from: a mixed-precision int8/fp8 engine keeps some matmuls in a float type (an
--accuracy-budget plan, a --layer-precision rule) while the next layer reads their output
quantized: an FFN's first matmul kept in fp16 before an fp8 second one. Unfused, the matmul
writes Y in 16 bits and a QuantizeLinear kernel reads it back to write Yq, two passes over the
widest activation of the block; fused, the GEMM's epilogue quantizes the tile it holds
(precision/fuse_matmul_quantize.py). The op is exactly the two it replaces, so the oracle is
their references in sequence and fusing changes no reference value.
"""
from __future__ import annotations

from typing import Sequence

import torch

from kiln.kernels.reference.registry import lookup, reference_op

Tensor = torch.Tensor


@reference_op("MatMulQuantize", domain="kiln")
def matmul_quantize(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, y_scale: Tensor,
                    y_zero_point: Tensor | None = None, *, trans_b: int = 0, alpha: float = 1.0,
                    activation: str = "", activation_params: Sequence[float] = (), output_dtype: int = 0,
                    precision: int = 0) -> Tensor:
    """Yq = QuantizeLinear(FusedMatMul(A, B, bias, residual)) as the module docstring defines it."""
    y = lookup("kiln::FusedMatMul").fn(a, b, bias, residual, trans_b=trans_b, alpha=alpha, activation=activation,
                                       activation_params=activation_params)
    return lookup("QuantizeLinear").fn(y, y_scale, y_zero_point, axis=-1, output_dtype=output_dtype,
                                       precision=precision)

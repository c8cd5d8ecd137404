"""Tactics for kiln::MatMulQuantize (kernels/reference/matmul_quantize.py): a float matmul whose
output is quantized for the next, 8-bit, layer.

  .cublas, .cublas_tanh_gelu  the matmul as kiln::FusedMatMul's cuBLAS tactics run it, then
                              QuantizeLinear's Triton kernel: the two steps the fusion replaced,
                              so a build never gets slower for fusing
  .cublas_act_quantize        the matmul without its activation on cuBLAS (bias and residual in
                              its epilogue), then one Triton pass that applies the activation
                              and quantizes: for an activation cuBLAS lacks or approximates
                              (exact Gelu), two passes where .cublas takes three (MiniLM's FFN
                              expansion, H200 2026-11-27: 20.7 us against .cublas 25.3 at
                              M 4096, 139 against 177 at M 32768; .triton 18.0 / 97.6 wins both)
  .triton                     kernels/triton/gemm.py with the quantization in its store: Y is
                              never written in 16 bits nor read back

Each supports what both of its halves support: the FusedMatMul tactic's query on A, B, bias and
residual, and QuantizeLinear.triton's on Y (A's type, the node's output shape) with the scale and
zero point. The tuner times them and keeps the fastest whose codes agree with the reference
within the quantized layers' one step (compiler/tolerance.py).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from kiln.kernels.triton import available as triton_available
from kiln.tactics.matmul import (cublas_fused_matmul, cublas_fused_matmul_tanh_gelu, supports_cublas_fused,
                                 supports_cublas_tanh_gelu, supports_triton_fused)
from kiln.tactics.quantized import supports_triton_quantize
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Tensor = torch.Tensor
MatMulFn = Callable[..., Tensor]
# kiln::FusedMatMul's attributes (the rest, output_dtype and precision, are QuantizeLinear's)
MATMUL_ATTRS = ("trans_b", "alpha", "activation", "activation_params")


def _then_quantize(matmul: MatMulFn) -> MatMulFn:
    """A MatMulQuantize kernel: `matmul` (a FusedMatMul tactic), then QuantizeLinear.triton on its Y."""
    def run(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, y_scale: Tensor,
            y_zero_point: Tensor | None = None, *, output_dtype: int = 0, precision: int = 0, **attrs: Any) -> Tensor:
        from kiln.kernels.triton.quantize import quantize_linear

        y = matmul(a, b, bias, residual, **attrs)
        return quantize_linear(y, y_scale, y_zero_point, axis=-1, output_dtype=output_dtype, precision=precision)
    return run


def _act_in_quantize(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, y_scale: Tensor,
                     y_zero_point: Tensor | None = None, *, output_dtype: int = 0, precision: int = 0,
                     activation: str = "", activation_params: Sequence[float] = (), **attrs: Any) -> Tensor:
    """.cublas_act_quantize: cuBLAS's GEMM with bias/residual, then activation and QuantizeLinear in one pass."""
    from kiln.kernels.triton.quantize import quantize_linear

    y = cublas_fused_matmul(a, b, bias, residual, **attrs)
    return quantize_linear(y, y_scale, y_zero_point, axis=-1, output_dtype=output_dtype, precision=precision,
                           activation=activation, activation_params=activation_params)


def _supports_act_in_quantize(query: TacticQuery) -> bool:
    """An activation the Triton kernels know; the GEMM without it on cuBLAS; the quantization on Triton."""
    from kiln.kernels.triton.activation import ACTIVATIONS

    activation = query.attrs.get("activation", "")
    if not activation or activation not in ACTIVATIONS:
        return False
    bare = replace(query, attrs={k: v for k, v in query.attrs.items() if k not in ("activation", "activation_params")})
    return _supports(supports_cublas_fused)(bare)   # (the quantization's half is the same query's)


def _parts(query: TacticQuery) -> tuple[TacticQuery, TacticQuery] | None:
    """The FusedMatMul query and the QuantizeLinear query the node is made of (None: Y's shape is unknown)."""
    dts = (*query.input_dtypes, *(None,) * 6)[:6]
    shapes = (*query.input_shapes, *(None,) * 6)[:6]
    a, b = shapes[0], shapes[1]
    if a is None or b is None or len(b) != 2:
        return None
    trans_b = int(query.attrs.get("trans_b", 0))
    y = (*a[:-1], b[0] if trans_b else b[1])
    matmul = TacticQuery("kiln::FusedMatMul", query.device, tuple(dts[:4]),
                         {k: v for k, v in query.attrs.items() if k in MATMUL_ATTRS}, tuple(shapes[:4]),
                         query.layout, 1)
    quantize = TacticQuery("QuantizeLinear", query.device, (dts[0], dts[4], dts[5]),
                           {"output_dtype": query.attrs.get("output_dtype", 0),
                            "precision": query.attrs.get("precision", 0), "saturate": 1, "axis": -1},
                           (y, shapes[4], shapes[5]), query.layout, 1)
    return matmul, quantize


def _supports(matmul_supports: Callable[[TacticQuery], bool]) -> Callable[[TacticQuery], bool]:
    def supports(query: TacticQuery) -> bool:
        parts = _parts(query)
        return parts is not None and matmul_supports(parts[0]) and supports_triton_quantize(parts[1])
    return supports


if triton_available():
    from kiln.kernels.triton import gemm as _triton_gemm

    register_tactic(Tactic("kiln::MatMulQuantize.cublas", "kiln::MatMulQuantize", 1, ("cuda",),
                           _then_quantize(cublas_fused_matmul), _supports(supports_cublas_fused)))
    register_tactic(Tactic("kiln::MatMulQuantize.cublas_tanh_gelu", "kiln::MatMulQuantize", 1, ("cuda",),
                           _then_quantize(cublas_fused_matmul_tanh_gelu), _supports(supports_cublas_tanh_gelu)))
    register_tactic(Tactic("kiln::MatMulQuantize.cublas_act_quantize", "kiln::MatMulQuantize", 1, ("cuda",),
                           _act_in_quantize, _supports_act_in_quantize))
    register_tactic(Tactic("kiln::MatMulQuantize.triton", "kiln::MatMulQuantize", 1, ("cuda",),
                           _triton_gemm.matmul_quantize, _supports(supports_triton_fused),
                           configs=_triton_gemm.CONFIGS))

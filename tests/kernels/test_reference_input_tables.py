"""The input-position tables of kiln's fused ops match their reference signatures: the precision
passes and tactics index inputs by these tables."""
from __future__ import annotations

import inspect

from kiln.kernels.reference import lookup
from kiln.kernels.reference.fused import ATTENTION_INPUTS
from kiln.kernels.reference.quantized import QCONV_INPUTS, QMATMUL_INPUTS
from kiln.passes import fuse_qdq_bias
from kiln.precision import fold_requantize, fuse_code_table, quantize_attention_output, quantize_residuals
from kiln.tactics import attention, quantized, quantized_conv


def _positional(op: str) -> tuple[str, ...]:
    params = inspect.signature(lookup(op).fn).parameters.values()
    return tuple(p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD)


def test_tables_are_the_reference_signatures():
    assert _positional("kiln::QMatMul") == QMATMUL_INPUTS
    assert _positional("kiln::QConv") == QCONV_INPUTS
    assert _positional("kiln::Attention") == ATTENTION_INPUTS
    # QConv's first ten inputs mean what QMatMul's do (fold_requantize treats both alike); both
    # have the mid quantization, at their own positions (tolerance.quantized_steps looks it up)
    assert tuple(n.replace("x_", "a_").replace("w_", "b_") for n in QCONV_INPUTS[:10]) == QMATMUL_INPUTS[:10]
    assert QMATMUL_INPUTS[10:12] == QCONV_INPUTS[13:] == ("mid_scale", "mid_zp")
    assert QMATMUL_INPUTS[12:] == ("table",)


def test_consumers_index_by_the_tables():
    assert quantized.OUT_SCALE == fold_requantize.OUT_SCALE == QMATMUL_INPUTS.index("out_scale") == 8
    assert quantized.MID_SCALE == fuse_qdq_bias.MID_SCALE == 10 and quantized.MID_ZP == fuse_qdq_bias.MID_ZP == 11
    assert quantized.TABLE == fuse_code_table.TABLE == 12
    assert quantized.RESIDUAL == quantized_conv.RESIDUAL == quantize_residuals.RESIDUAL == 7
    assert (quantized_conv.RES_SCALE, quantized_conv.RES_ZP) == (quantize_residuals.RES_SCALE,
                                                                 quantize_residuals.RES_ZP) == (10, 11)
    assert attention.OUT_SCALE == quantize_attention_output.OUT_SCALE == 4 and attention.OUT_ZP == 5

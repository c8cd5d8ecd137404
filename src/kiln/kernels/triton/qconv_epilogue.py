"""The epilogue of the Triton kiln::QConv kernels (qconv.py's pointer walks, qconv_window.py's TMA
walk): the accumulator tile in float32, scaled, biased, the residual added (an 8-bit one
dequantized), the activation, then the float store or the requantization. qconv.py's module
docstring has the arithmetic."""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.kernels.triton.activation import activate
from kiln.kernels.triton.quantize import requantize, requantize_relu, shifted_round, small_int_to_float


@triton.jit
def conv_epilogue_value(acc, rn, r, XS, WS, BIAS, sb, RS, RZP, OS, OZP, p0, p1, FLOAT_ACC: tl.constexpr,
                        ACC_MAGIC: tl.constexpr, WS_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                        HAS_RES: tl.constexpr, RES_Q: tl.constexpr, RES_INT: tl.constexpr, HAS_RZP: tl.constexpr,
                        ACT: tl.constexpr, OUT_KIND: tl.constexpr, HAS_OZP: tl.constexpr, QMIN: tl.constexpr,
                        QMAX: tl.constexpr, MS, MZP, MID: tl.constexpr, HAS_MZP: tl.constexpr, MQMIN: tl.constexpr,
                        MQMAX: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] tile `acc` as Y stores it: the float value (OUT_KIND 0) or the code
    (int8/uint8; float8 as its e4m3 bits), with `r` the residual tile as loaded (unused without
    one); rn: the tile's output channels (wrapped into range). MID: the value quantized to the
    codes of (MS, MZP) in [MQMIN, MQMAX] and dequantized before the residual (the reference's
    mid_scale: an explicitly quantized block's conv output)."""
    if FLOAT_ACC:
        accf = acc
    elif ACC_MAGIC:  # |acc| < 2^22: exactly, without the I2F conversion
        accf = small_int_to_float(acc)
    else:
        accf = acc.to(tl.float32)
    xs = tl.load(XS).to(tl.float32)
    if WS_PER_CHANNEL:
        v = accf * (xs * tl.load(WS + rn).to(tl.float32))[None, :]
    else:
        v = accf * (xs * tl.load(WS).to(tl.float32))
    if HAS_BIAS:
        v = v + tl.load(BIAS + rn * sb).to(tl.float32)[None, :]
    if MID:   # (clamp(round(v / ms) + mz) - mz) * ms, rounded as quantize.py's requantize rounds
        mz = 0.0
        if HAS_MZP:
            mz = tl.load(MZP).to(tl.float32)
        ms = tl.load(MS).to(tl.float32)
        v = (shifted_round(v * tl.math.div_rn(1.0, ms), MQMIN - mz, MQMAX - mz) - 12582912.0) * ms
    if HAS_RES:
        if RES_INT:  # int8/uint8: .to(float32) made the large tiles spill
            r = small_int_to_float(r)
        else:
            r = r.to(tl.float32)
        if RES_Q:  # an 8-bit residual: (R - residual_zp) * residual_scale
            if HAS_RZP:
                r = r - tl.load(RZP).to(tl.float32)
            r = r * tl.load(RS).to(tl.float32)
        v = v + r
    if not (ACT == 1 and OUT_KIND == 1):   # Relu before an integer output: folded into its saturation
        v = activate(v, ACT, p0, p1)
    if OUT_KIND != 0:
        # Requantized (quantize.py's requantize): v times 1 / out_scale, the reciprocal correctly
        # rounded once per program (a division per element is a long IEEE sequence with a
        # slow-path call, unrolled over the tile), rounded by one float32 add, the zero point
        # added, saturated; float8 gives the e4m3 bits, stored into Y viewed as uint8.
        zp = 0
        if HAS_OZP:
            zp = tl.load(OZP)
        inv = tl.math.div_rn(1.0, tl.load(OS).to(tl.float32))
        if ACT == 1 and OUT_KIND == 1:
            v = requantize_relu(v, inv, zp, HAS_OZP, QMIN, QMAX)
        else:
            v = requantize(v * inv, zp, HAS_OZP, OUT_KIND == 2, QMIN, QMAX)
    return v


@triton.jit
def conv_epilogue(acc, rn, y_off, r_off, mask, Y, XS, WS, BIAS, sb, RES, RS, RZP, OS, OZP, p0, p1,
                  FLOAT_ACC: tl.constexpr, ACC_MAGIC: tl.constexpr, WS_PER_CHANNEL: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RES_Q: tl.constexpr, RES_INT: tl.constexpr,
                  HAS_RZP: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr, HAS_OZP: tl.constexpr,
                  QMIN: tl.constexpr, QMAX: tl.constexpr, Y_TMA: tl.constexpr = False, off_m=0, off_n=0, MS=0.0,
                  MZP=0.0, MID: tl.constexpr = False, HAS_MZP: tl.constexpr = False, MQMIN: tl.constexpr = 0,
                  MQMAX: tl.constexpr = 0):
    """conv_epilogue_value's tile stored at Y + y_off through pointers (masked), or with Y_TMA (Y a
    descriptor of [BLOCK_M, BLOCK_N] boxes of the flat [N*H*W, OC] output) as one TMA box at
    (off_m, off_n), the copy engine clipping it at the matrix's edges. The residual is read at
    RES + r_off through pointers either way (a TMA box loaded here would make the epilogue wait for
    it: slower on ResNet-50's residual layers, benchmarks/kernels_qconv_store.py). MID and its
    operands: conv_epilogue_value's."""
    r = 0.0
    if HAS_RES:
        r = tl.load(RES + r_off, mask=mask, other=0.0)
    v = conv_epilogue_value(acc, rn, r, XS, WS, BIAS, sb, RS, RZP, OS, OZP, p0, p1, FLOAT_ACC, ACC_MAGIC,
                            WS_PER_CHANNEL, HAS_BIAS, HAS_RES, RES_Q, RES_INT, HAS_RZP, ACT, OUT_KIND, HAS_OZP,
                            QMIN, QMAX, MS, MZP, MID, HAS_MZP, MQMIN, MQMAX)
    if Y_TMA:
        Y.store([off_m, off_n], v.to(Y.dtype))
    else:
        tl.store(Y + y_off, v.to(Y.dtype.element_ty), mask=mask)

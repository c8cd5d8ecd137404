"""What every 8-bit GEMM kernel does per output tile (qgemm.py, qgemm_tma.py; the K step also
qconv.py's): the K step on the tensor cores (dot8) and the epilogue that scales, adds bias and
residual, applies the activation and stores or requantizes (qgemm.py's module docstring has
the arithmetic)."""
from __future__ import annotations

import triton
import triton.language as tl

from kiln.kernels.triton.activation import activate  # one activation vocabulary for every epilogue
from kiln.kernels.triton.quantize import requantize, shifted_round


@triton.jit
def dot8(a, b, acc, FP8_ACC: tl.constexpr):
    """acc + a @ b on 8-bit tiles, the K-step of the quantized GEMM and convolution: int8 into
    the int32 accumulator (exact); float8 into float32, moved to a separate float32 register
    every FP8_ACC products when FP8_ACC > 0 (tl.dot's max_num_imprecise_acc; Triton promotes
    whenever that count is at most the dot's K), or, with FP8_ACC = 0, accumulated by the MMA
    throughout: no max_num_imprecise_acc is passed, and Triton's default on Hopper (2**30)
    never promotes. (Passing 0 would promote after every wgmma instruction, the slowest mode.)"""
    if FP8_ACC > 0:
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=FP8_ACC)
    else:
        acc = tl.dot(a, b, acc, out_dtype=acc.dtype)  # int32 for int8 (Triton requires the match)
    return acc


@triton.jit
def epilogue_value(acc, rn, res, A_SCALE, B_SCALE, BIAS, OUT_SCALE, OUT_ZP, stride_bs, stride_bias, stride_os,
                   p0, p1, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, REQUANT: tl.constexpr,
                   OUT_FP8: tl.constexpr, HAS_OUT_ZP: tl.constexpr, OUT_PER_COL: tl.constexpr, QMIN: tl.constexpr,
                   QMAX: tl.constexpr, MS=0.0, MSI=0.0, MZP=0.0, MID: tl.constexpr = False,
                   HAS_MZP: tl.constexpr = False,
                   MQMIN: tl.constexpr = 0, MQMAX: tl.constexpr = 0, TABLE=0, HAS_TABLE: tl.constexpr = False):
    """The accumulator tile in float32: scales, bias per column, residual (`res`, the tile as
    loaded), activation; then the float value, or the code when requantizing (int8/uint8;
    float8 as its uint8 bits). MID (1: one value, 2: one per column): the product quantized to
    the codes of (MS, MZP) in [MQMIN, MQMAX] and dequantized before the bias (the reference's
    mid_scale: ONNX Runtime's MatMul -> Q -> DQ -> Add(bias)), rounded as qconv_epilogue's mid
    quantization; MSI holds 1 / MS (quantize.reciprocal_of, as div_rn(1, MS) gives it). HAS_TABLE:
    each code c then becomes TABLE[bits of c] (256 codes: the element-wise program that followed
    the layer, reference/quantized.looked_up)."""
    scale = tl.load(A_SCALE).to(tl.float32) * tl.load(B_SCALE + rn * stride_bs).to(tl.float32)  # [BLOCK_N]
    v = acc.to(tl.float32) * scale[None, :]
    if MID:
        mz = 0.0
        if MID == 2:    # one mid scale (and zero point) per column: merged projections
            if HAS_MZP:
                mz = tl.load(MZP + rn).to(tl.float32)[None, :]
            ms = tl.load(MS + rn).to(tl.float32)[None, :]
            msi = tl.load(MSI + rn)[None, :]          # 1 / ms, float32, made on the host
        else:
            if HAS_MZP:
                mz = tl.load(MZP).to(tl.float32)
            ms = tl.load(MS).to(tl.float32)
            msi = tl.load(MSI)
        v = (shifted_round(v * msi, MQMIN - mz, MQMAX - mz) - 12582912.0) * ms
    if HAS_BIAS:
        v += tl.load(BIAS + rn * stride_bias).to(tl.float32)[None, :]
    if HAS_RES:
        v += res.to(tl.float32)
    v = activate(v, ACT, p0, p1)
    if REQUANT:
        zp = 0
        # OUT_SCALE holds 1 / out_scale, correctly rounded in float32 (quantize.reciprocal_of): one
        # multiply and a few integer ops per element. (Dividing in the kernel, even once per
        # column of the tile, costs an IEEE division sequence per column a thread holds, a
        # large share of a short-K GEMM with 8-warp tiles.) out_scale / out_zp per column
        # (OUT_PER_COL, SmoothQuant's) or per tensor: then scalars, not a register per column a
        # thread holds (three per column for an integer zero point, in requantize).
        if OUT_PER_COL:
            inv = tl.load(OUT_SCALE + rn * stride_os).to(tl.float32)[None, :]
            if HAS_OUT_ZP:
                zp = tl.load(OUT_ZP + rn * stride_os)[None, :]
        else:
            inv = tl.load(OUT_SCALE).to(tl.float32)
            if HAS_OUT_ZP:
                zp = tl.load(OUT_ZP)
        v = requantize(v * inv, zp, HAS_OUT_ZP, OUT_FP8, QMIN, QMAX)   # int8/uint8; float8 as its uint8 bits
        if HAS_TABLE:   # 256 entries, L1-resident: one load per element instead of a kernel over Y
            v = tl.load(TABLE + (v.to(tl.int32) & 255))
    return v


@triton.jit
def epilogue(acc, offs_m, offs_n, rn, M, N, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, stride_ym,
             stride_bs, stride_bias, stride_os, p0, p1, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
             ACT: tl.constexpr, REQUANT: tl.constexpr, OUT_FP8: tl.constexpr, HAS_OUT_ZP: tl.constexpr,
             OUT_PER_COL: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, MS=0.0, MSI=0.0, MZP=0.0,
             MID: tl.constexpr = False, HAS_MZP: tl.constexpr = False, MQMIN: tl.constexpr = 0,
             MQMAX: tl.constexpr = 0, TABLE=0, HAS_TABLE: tl.constexpr = False):
    """epilogue_value's tile stored through pointers (residual read the same way), masked at M and N."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)                     # [BLOCK_M, BLOCK_N]
    offs_y = offs_m[:, None] * stride_ym + offs_n[None, :]                   # Y and RES: same strides
    res = 0.0
    if HAS_RES:
        res = tl.load(RES + offs_y, mask=mask, other=0.0)
    v = epilogue_value(acc, rn, res, A_SCALE, B_SCALE, BIAS, OUT_SCALE, OUT_ZP, stride_bs, stride_bias, stride_os,
                       p0, p1, HAS_BIAS, HAS_RES, ACT, REQUANT, OUT_FP8, HAS_OUT_ZP, OUT_PER_COL, QMIN, QMAX,
                       MS, MSI, MZP, MID, HAS_MZP, MQMIN, MQMAX, TABLE, HAS_TABLE)
    tl.store(Y + offs_y, v.to(Y.dtype.element_ty), mask=mask)

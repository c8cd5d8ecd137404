"""Quantized matrix multiply with a fused epilogue, in Triton: kiln::QMatMul on tensor cores.

The oracle is kiln::QMatMul (kernels/reference/quantized.py):

  Y = [Q](act(sum_k (a - a_zp)(b - b_zp) * a_scale * b_scale[n] + bias[n] + residual))

A [..., M, K] (leading dims folded into M) is int8/uint8 or float8_e4m3fn; B is the weight
as stored, [K, N], or [N, K] with trans_b (read through its strides, never copied here; the
tactic hands over a K-major copy, which is what 8-bit tensor-core operands want).

Accumulation. int8 x int8 is summed in int32 by tl.dot (exact: every partial sum is below
MAX_K * 2^14 < 2^31, see MAX_K). uint8 operands become int8 as a - 128 (the top bit
flipped; exact), and zero points are handled by expanding the product:

  sum (a' - za)(b' - zb[n]) = S - za * colsum(b')[n] - zb[n] * rowsum(a')[m] + K * za * zb[n]

with a' = a - 128 for uint8 A (else a), za = a_zp - 128 for uint8 (else a_zp; 0 if absent),
and the same for B. colsum(b') depends on the weight alone: it is summed once per weight
tensor on the device (column_sums, memoised) and the kernel reads one int32 per column (in a
loop of its own over B instead, it cost ONNX Runtime's QDQ BERT-base, whose activations carry zero
points, a second walk of B per tile). The row sums of A run in a loop of their own after the
main loop, only when the loaded zero point of B is non-zero, so the symmetric case kiln's
calibration makes (zero points absent or 0) costs one scalar load and no branch in the K loop. Masked K
loads (K not a multiple of BLOCK_K) read 0, and a uint8 tile is zeroed there after the shift
(_load_signed): Triton 3.6 fills the masked lanes of a vectorised 8-bit load wrongly from
an `other` of 128. Nothing is read on the host: zero points and scales are loaded by the
kernel, so the launch never synchronises and CUDA graphs capture it. float8 x float8 is summed in float32 by tl.dot
(fp8e4nv, sm_89+): each product is exact in float32 (4 + 4 significant bits), the sum is
rounded; on Hopper the tensor core's fp8 accumulator is narrower than float32 (qconv.py's
docstring), so by default the partial sum is moved to a float32 register every BLOCK_K
products (tl.dot's max_num_imprecise_acc), as cuBLASLt does without fast accumulation. The
config key FP8_ACC sets that (fp8_promotion, dot8): 0 lets the MMA accumulate throughout, as
cuBLASLt's fast-accumulation mode does, which the tuner keeps only where the output meets
the tolerance. float8 has no zero point.

Epilogue (float32, once per tile): acc * (a_scale * b_scale[n]) + bias[n] + residual,
activation (gemm.py's, the vocabulary of fused.ACTIVATIONS), then either a cast to the float
output type (a_scale's) or the requantization (quantize.py's requantize): v * (1 / out_scale)
with the reciprocal correctly rounded in float32 once per scale tensor on the host side
(quantize.reciprocal_of, memoised; an IEEE division in the kernel is a long instruction
sequence with a slow-path call, per element or even per column of the tile), round half to
even by one float32 add, add out_zp, saturate (int8/uint8), or clamp to +-448 and encode the
nearest e4m3 value (float8: the GPU's conversion where compiled, quantize.requantize; stored
through a uint8 view of Y). The reference does all of this in float64; float32 (and the
reciprocal) move a value by a few ulps, which changes a requantized output by one step only
near a rounding tie (compiler/tolerance.py's rule).
Per-channel parameters (b_scale, b_zp, bias, and out_scale/out_zp when the layer requantizes
an activation that SmoothQuant divides per channel) are read with a stride (0 for one
element), so per-tensor and per-channel are the same kernel; a per-tensor out_scale/out_zp
is a scalar in the epilogue (OUT_PER_COL off). All-zero integer zero points are dropped by
the launcher (quantize.needed_zero_point).
Rows/columns past M/N are read wrapped (index % M) as in gemm.py; only stores are masked.
Offsets are int32: the launcher refuses operands of 2**31 elements or more.

Kernels: _qgemm_kernel (plain loads, any operands); qgemm_tma.py's (config TMA=1: TMA
descriptors, int8 or float8 without zero points, K-contiguous 16-byte-aligned operands), one
tile per program or (PERSISTENT=1) one program per SM walking the tiles with the loop nest
flattened, so that the next tile's loads overlap this tile's epilogue; SM_PROGRAMS=2, two such
programs per SM (qgemm_tma.persistent_programs), so that one's epilogue runs beside the other's
MMAs. FAST_GELU=1 (float8 outputs only): a Gelu in its tanh form on the hardware tanh
(activation.fast_gelu_code; within the float8 codes' tolerance, not float32's).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.memo import derived, derived_table
from kiln.kernels.reference.quantized import requantized_type
from kiln.kernels.triton.activation import activation_code, fast_gelu_code
from kiln.kernels.triton.gemm import grouped_tile
from kiln.kernels.triton.qgemm_space import FP8_CONFIGS, INT8_CONFIGS, MIN_BLOCK_K, fp8_promotion
from kiln.kernels.triton.qgemm_tile import dot8, epilogue
from kiln.kernels.triton.qgemm_tma import descriptor_type, persistent_programs, qgemm_tma_kernel, store_boxes, tma_ok
from kiln.kernels.triton.quantize import OUT_TYPES, needed_zero_point, reciprocal_of
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

INT_INPUTS = (torch.int8, torch.uint8)
FP8 = torch.float8_e4m3fn
FLOAT_OUTPUTS = (torch.float16, torch.bfloat16, torch.float32)
REQUANT_TYPES = {"int8": torch.int8, "uint8": torch.uint8, "float8_e4m3fn": torch.float8_e4m3fn}
# Longest reduction: |a'|, |b'|, |za|, |zb| <= 128, so S and each correction term is at most
# K * 2^14 in magnitude and their running sum at most 4 * K * 2^14 = 2^30 for K = 2^14:
# int32 never overflows. (float8 has its own limit, quantized.FP8_EXACT_K, in the reference.)
MAX_K = 16384
@triton.jit
def _signed(x, U8: tl.constexpr):
    """uint8 -> int8 as the value minus 128 (the top bit flipped), exactly; int8 passes."""
    if U8:
        x = (x.to(tl.int32) - 128).to(tl.int8)
    return x


@triton.jit
def _load_signed(ptrs, mask, U8: tl.constexpr):
    """An 8-bit int tile in the signed domain (_signed), 0 where `mask` is false.

    Masked lanes read 0, never 128 (what becomes 0 after the shift): Triton 3.6 fills the
    masked lanes of a vectorised 8-bit load from a constant `other` sign-extended across the
    32-bit word, so 128 (0x80) reads as 128, 255, 255, 255 (fixed in later Triton). uint8
    tiles are zeroed after the shift instead; int8 tiles load 0 directly."""
    x = tl.load(ptrs, mask=mask, other=0)
    if U8:
        x = _signed(x, U8)
        x = tl.where(mask, x, tl.zeros_like(x))
    return x


@triton.jit
def _row_sums(A, rm, K, stride_am, A_U8: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """sum_k a'[m, k] for the tile's rows, int32 [BLOCK_M]."""
    offs_k = tl.arange(0, BLOCK_K)
    total = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        kk = k * BLOCK_K + offs_k
        a = _load_signed(A + rm[:, None] * stride_am + kk[None, :], kk[None, :] < K, A_U8)
        total += tl.sum(a.to(tl.int32), axis=1)
    return total


@triton.jit
def _qgemm_kernel(
        A, B, A_SCALE, A_ZP, B_SCALE, B_ZP, BIAS, RES, Y, OUT_SCALE, OUT_ZP, COLSUM, M, N, K,
        stride_am, stride_bk, stride_bn, stride_ym, stride_bs, stride_bz, stride_bias, stride_os, p0, p1, MS, MSI, MZP,
        TABLE, FP8: tl.constexpr, A_U8: tl.constexpr, B_U8: tl.constexpr,
        CORR_A: tl.constexpr, CORR_B: tl.constexpr, HAS_AZP: tl.constexpr, HAS_BZP: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, REQUANT: tl.constexpr,
        OUT_FP8: tl.constexpr, HAS_OUT_ZP: tl.constexpr, OUT_PER_COL: tl.constexpr, QMIN: tl.constexpr,
        QMAX: tl.constexpr, EVEN_K: tl.constexpr, FP8_ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, MID: tl.constexpr, HAS_MZP: tl.constexpr, MQMIN: tl.constexpr,
        MQMAX: tl.constexpr, HAS_TABLE: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                         # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                         # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)                                           # [BLOCK_K]
    rm = offs_m % M
    rn = offs_n % N
    a_ptrs = A + rm[:, None] * stride_am + offs_k[None, :]                   # [BLOCK_M, BLOCK_K]
    b_ptrs = B + offs_k[:, None] * stride_bk + rn[None, :] * stride_bn       # [BLOCK_K, BLOCK_N]

    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = _signed(tl.load(a_ptrs), A_U8)
            b = _signed(tl.load(b_ptrs), B_U8)
        elif FP8:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        else:
            k_left = K - k * BLOCK_K
            a = _load_signed(a_ptrs, offs_k[None, :] < k_left, A_U8)
            b = _load_signed(b_ptrs, offs_k[:, None] < k_left, B_U8)
        acc = dot8(a, b, acc, FP8_ACC)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk

    # Zero points (int only; module docstring): za, zb as int32 in the signed (a', b') domain,
    # where uint8 values and zero points are shifted by 128.
    if CORR_A:
        if HAS_AZP:
            za = tl.load(A_ZP).to(tl.int32) - (128 if A_U8 else 0)
        else:
            za = -128 if A_U8 else 0
        if za != 0:
            acc -= za * tl.load(COLSUM + rn)[None, :]
    if CORR_B:
        if HAS_BZP:
            zb = tl.load(B_ZP + rn * stride_bz).to(tl.int32) - (128 if B_U8 else 0)
        else:
            zb = tl.full((BLOCK_N,), -128 if B_U8 else 0, tl.int32)
        if tl.max(tl.abs(zb), axis=0) != 0:
            acc -= zb[None, :] * _row_sums(A, rm, K, stride_am, A_U8, BLOCK_K, BLOCK_M)[:, None]
        if CORR_A:
            acc += (K * za) * zb[None, :]

    epilogue(acc, offs_m, offs_n, rn, M, N, A_SCALE, B_SCALE, BIAS, RES, Y, OUT_SCALE, OUT_ZP, stride_ym,
             stride_bs, stride_bias, stride_os, p0, p1, HAS_BIAS, HAS_RES, ACT, REQUANT, OUT_FP8, HAS_OUT_ZP,
             OUT_PER_COL, QMIN, QMAX, MS, MSI, MZP, MID, HAS_MZP, MQMIN, MQMAX, TABLE, HAS_TABLE)


def output_dtype(a_scale: Tensor, out_scale: Tensor | None, out_zp: Tensor | None, out_dtype: int) -> torch.dtype:
    """Y's dtype as the reference decides it: a_scale's without out_scale, else the requantized
    type (out_dtype when non-zero, else out_zp's, else uint8)."""
    if out_scale is None:
        return a_scale.dtype
    name = requantized_type(out_zp, out_dtype).name
    # By name: int4 is held in torch.int8 but saturates at +-8, which this kernel does not do.
    assert name in REQUANT_TYPES, f"the quantized GEMM requantizes to {sorted(REQUANT_TYPES)}, not {name}"
    return REQUANT_TYPES[name]


def _per_channel(p: Tensor | None, n: int, what: str) -> int:
    """The stride to read `p` (one element or [n]) per output column: 0 or its own."""
    if p is None:
        return 0
    assert p.numel() in (1, n) and (p.numel() == 1 or p.dim() == 1), \
        f"{what} must have one element or shape [{n}], got {tuple(p.shape)}"
    return 0 if p.numel() == 1 else p.stride(0)


def _check(a: Tensor, b: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_zp: Tensor | None,
           out_scale: Tensor | None, out_zp: Tensor | None, y_dtype: torch.dtype, trans_b: int) -> None:
    fp8 = a.dtype == FP8
    assert (a.dtype in INT_INPUTS and b.dtype in INT_INPUTS) or (fp8 and b.dtype == FP8), \
        f"A and B must both be int8/uint8 or both float8_e4m3fn, got {a.dtype}, {b.dtype}"
    assert a.dim() >= 2 and b.dim() == 2, f"A must be [..., M, K] and B 2-D, got {tuple(a.shape)}, {tuple(b.shape)}"
    k_b = b.shape[1] if trans_b else b.shape[0]
    assert a.shape[-1] == k_b, f"K differs: A {tuple(a.shape)}, B {tuple(b.shape)}, trans_b={trans_b}"
    assert fp8 or a.shape[-1] <= MAX_K, f"K={a.shape[-1]} passes MAX_K={MAX_K}: the int32 sum could overflow"
    assert a_scale.numel() == 1 and a_scale.dtype in FLOAT_OUTPUTS, \
        f"a_scale must be one float16/bfloat16/float32 element, got {a_scale.dtype}{list(a_scale.shape)}"
    assert not fp8 or (a_zp is None and b_zp is None), "float8 inputs take no zero point (pass None)"
    assert a_zp is None or a_zp.numel() == 1, f"a_zp must be per tensor, got shape {tuple(a_zp.shape)}"
    if out_scale is not None:
        n = b.shape[0] if trans_b else b.shape[1]
        assert out_scale.numel() in (1, n) and (out_zp is None or out_zp.numel() == out_scale.numel()), \
            f"out_scale/out_zp are per tensor or per output column ([{n}]), got {tuple(out_scale.shape)}"
    for t in (a, b):
        assert t.numel() < 2**31, "operands of 2**31 elements or more overflow int32 offsets"


# weight tensor -> {trans_b: sum_k b'[k, n] as int32 [N]}
_COLUMN_SUMS = derived_table()


def column_sums(b_q: Tensor, trans_b: int) -> Tensor:
    """sum_k b'[k, n] of a weight (b' = b - 128 for uint8), int32 [N], contiguous: the zero-point
    correction's column term (module docstring), made on the device once per weight tensor
    (memo.derived: no host read, so a CUDA graph may capture it)."""
    def make(b: Tensor) -> Tensor:
        signed = b.to(torch.int32) - (128 if b.dtype == torch.uint8 else 0)
        return signed.sum(dim=1 if trans_b else 0, dtype=torch.int32).contiguous()
    return derived(_COLUMN_SUMS, b_q, trans_b, make)


def qmatmul(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
            b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
            out_scale: Tensor | None = None, out_zp: Tensor | None = None, mid_scale: Tensor | None = None,
            mid_zp: Tensor | None = None, table: Tensor | None = None, *, trans_b: int = 0,
            activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
            dynamic: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """kiln::QMatMul in one kernel; A [..., M, K], B [K, N] or [N, K] (trans_b). Module docstring;
    mid_scale / mid_zp (one value each, or one per column): the product rounded to those codes and
    back before the bias (qgemm_tile.epilogue_value); `table` (256 int8/uint8 entries): each output
    code looked up in it (reference/quantized.looked_up); `dynamic`: a_zp is computed at run time
    (DynamicQuantizeLinear's) and always applied, never read on the host."""
    y_dtype = output_dtype(a_scale, out_scale, out_zp, out_dtype)
    _check(a_q, b_q, a_scale, a_zp, b_zp, out_scale, out_zp, y_dtype, trans_b)
    if table is not None:
        assert y_dtype in (torch.int8, torch.uint8) and table.numel() == 256 and \
            table.dtype in (torch.int8, torch.uint8), "a code table: 256 int8/uint8 entries for int8/uint8 codes"
    # All-zero integer zero points are dropped (quantize.needed_zero_point): kiln's quantizers
    # write them, and absent ones spare the correction code, the epilogue's zero-point registers,
    # and let TMA apply. (uint8's shift by 128 does not depend on them.)
    a_zp = a_zp if dynamic else needed_zero_point(a_zp)
    b_zp, out_zp = (needed_zero_point(z) for z in (b_zp, out_zp))
    fp8 = a_q.dtype == FP8
    cfg = dict((FP8_CONFIGS if fp8 else INT8_CONFIGS)[0] if config is None else config)
    lead, k = tuple(a_q.shape[:-1]), a_q.shape[-1]
    a2 = a_q.reshape(math.prod(lead), k)                                     # [M, K]
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    w = b_q if trans_b else b_q.t()                                          # [N, K] (a view)
    m, n = a2.shape[0], w.shape[0]
    y = torch.empty((m, n), dtype=y_dtype if table is None else table.dtype, device=a_q.device)   # [M, N]
    assert y.numel() < 2**31, "Y of 2**31 elements or more overflows int32 offsets"
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    strides = (_per_channel(b_scale, n, "b_scale"), _per_channel(b_zp, n, "b_zp"), _per_channel(bias, n, "bias"),
               _per_channel(out_scale, n, "out_scale"))
    # [M, N], row-major like Y: the kernel addresses both with Y's offsets.
    r2 = y if residual is None else residual.expand(*lead, n).reshape(m, n).contiguous()
    code, p0, p1 = activation_code(activation, activation_params)
    code = fast_gelu_code(code, cfg, y_dtype == FP8 and table is None)
    a_u8, b_u8 = a_q.dtype == torch.uint8, b_q.dtype == torch.uint8
    qrange = OUT_TYPES.get(y_dtype) or (0, 0)
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    assert bk >= MIN_BLOCK_K and bm >= 16 and bn >= 16, \
        f"config {cfg}: 8-bit tensor-core dots need BLOCK_K >= {MIN_BLOCK_K} and BLOCK_M, BLOCK_N >= 16"
    fp8_acc = fp8_promotion(cfg) if fp8 else 0
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    inv_scale = None if out_scale is None else reciprocal_of(out_scale)
    flat = [None if t is None else t.reshape(-1) for t in (a_zp, b_scale, b_zp, bias, inv_scale, out_zp)]
    a_zp1, b_scale1, b_zp1, bias1, out_scale1, out_zp1 = (y if t is None else t for t in flat)
    y_out = y.view(torch.uint8) if y_dtype == FP8 else y                     # float8: the kernel stores bits
    # What both kernels take alike: the epilogue's switches, the accumulation and the tiling.
    assert mid_scale is None or (mid_scale.numel() in (1, n) and (mid_zp is None or (
        mid_zp.numel() == mid_scale.numel() and mid_zp.dtype in (torch.int8, torch.uint8)))), \
        "mid_scale / mid_zp: one value each or one per column, mid_zp int8 or uint8"
    mid_int8 = mid_zp is not None and mid_zp.dtype == torch.int8
    mid_code = 0 if mid_scale is None else (1 if mid_scale.numel() == 1 else 2)
    mid = dict(MID=mid_code, HAS_MZP=mid_zp is not None, MQMIN=-128 if mid_int8 else 0,
               MQMAX=127 if mid_int8 else 255)
    # the mid scales and their reciprocals (float32, correctly rounded, memoised): the epilogue
    # multiplies by them (a division per column a thread holds costs a short-K GEMM dearly)
    mid_ops = (a_scale if mid_scale is None else mid_scale.reshape(-1).contiguous(),
               a_scale if mid_scale is None else reciprocal_of(mid_scale).reshape(-1),
               a_scale if mid_zp is None else mid_zp.reshape(-1).contiguous())
    common = dict(FP8=fp8, HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=code,
                  REQUANT=out_scale is not None, OUT_FP8=y_dtype == FP8, HAS_OUT_ZP=out_zp is not None,
                  OUT_PER_COL=strides[3] != 0, QMIN=qrange[0], QMAX=qrange[1], FP8_ACC=fp8_acc,
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"],
                  num_stages=cfg["num_stages"], HAS_TABLE=table is not None, **mid)
    corr_a = a_u8 or a_zp is not None
    colsum = column_sums(b_q, trans_b) if corr_a else y
    table1 = y if table is None else table.reshape(-1)
    if (cfg.get("TMA") or cfg.get("PERSISTENT")) and tma_ok(a2, w, a_zp, b_zp):
        desc = descriptor_type()
        persistent = bool(cfg.get("PERSISTENT"))
        programs = persistent_programs(grid[0], a2.device, cfg) if persistent else grid[0]
        y_arg, r_arg, y_tma = store_boxes(cfg, 1, y_out, r2, residual is not None)
        qgemm_tma_kernel[(programs,)](
            desc.from_tensor(a2, [bm, bk]), desc.from_tensor(w, [bn, bk]), a_scale.reshape(-1), b_scale1, bias1,
            r_arg, y_arg, out_scale1, out_zp1, m, n, k, programs, y.stride(0), strides[0], strides[2], strides[3],
            p0, p1, *mid_ops, table1, A_ZP=a_zp1, COLSUM=colsum, HAS_AZP=a_zp is not None, PERSISTENT=persistent,
            Y_TMA=y_tma, **common, **launch_options(a2))
        return y.reshape(*lead, n)
    _qgemm_kernel[grid](
        a2, w, a_scale.reshape(-1), a_zp1, b_scale1, b_zp1, bias1, r2, y_out, out_scale1, out_zp1, colsum, m, n, k,
        a2.stride(0), w.stride(1), w.stride(0), y.stride(0), *strides, p0, p1, *mid_ops,
        table1, A_U8=a_u8, B_U8=b_u8, CORR_A=corr_a, CORR_B=b_u8 or b_zp is not None,
        HAS_AZP=a_zp is not None, HAS_BZP=b_zp is not None, EVEN_K=k % bk == 0, **common, **launch_options(a2))
    return y.reshape(*lead, n)

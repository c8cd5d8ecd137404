"""Matrix multiply with a fused epilogue, in Triton: Y = act(alpha * A @ B + bias + residual),
stored in A's type, or quantized in the store (matmul_quantize: kiln::MatMulQuantize).

The oracles are kiln::FusedMatMul (kernels/reference/fused.py) and kiln::MatMulQuantize
(kernels/reference/matmul_quantize.py). A is viewed as [M, K] (leading
dims folded into M), B as [K, N] (a [N, K] weight with trans_b is read through its strides,
never copied), bias is [N] (one per output column), residual has Y's shape.

Design: one program computes one [BLOCK_M, BLOCK_N] tile of Y. Programs are numbered in
groups of GROUP_M tile rows, so consecutive programs share B's columns and A's rows while
they sit in L2. The K loop accumulates in float32 with tl.dot (tensor cores for fp16/bf16;
float32 inputs are multiplied in IEEE fp32, never tf32, because the kernel cannot know
whether the build allows tf32). The epilogue runs on the float32 accumulator: scale, bias,
residual, activation, then a single cast and store, so Y is rounded once where the
reference rounds after every step (the difference is within the fp16 tolerance).
Rows and columns past M/N are read wrapped (index % M) instead of masked, which keeps the
inner loop's loads unmasked unless K is not a multiple of BLOCK_K; only the store is masked.
Offsets are int32: the launcher refuses operands of 2**31 elements or more.
Any M, N, K is computed correctly; the K loop is software-pipelined (16-byte cp.async, the
configs' num_stages) only when K and N are multiples of 16 (see tactics/matmul.py). Configs with
PERSISTENT=1 run gemm_tma.py's kernel instead (TMA loads, one program per SM, the same epilogue:
store_epilogue) where its operands allow, these tiles through this kernel elsewhere.
Registers (ptxas, sm_90a, fp16, triton 3.9): no spills for bias + any activation; bias +
residual + erf-Gelu spills a few hundred bytes in 128x128/4-warp and 256-wide tiles, so the
tuner tends to pick 8 warps there. Gelu's erf is a polynomial (A&S 7.1.26, error < 1.5e-7)
because libdevice's erf spilled in every big tile.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantize import _division_dtype
from kiln.kernels.triton.activation import activate, activation_code
from kiln.kernels.triton.quantize import NO_QUANT, quant_out, quantized_dtype, requantize
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The tuning space: tile shape, L2 grouping, warps and pipeline depth. Chosen for Hopper
# (H100/H200) fp16/bf16: shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K * 2 bytes,
# so 128x256x64 at 3 stages uses 144 KiB of the 227 KiB a block may have. Small tiles are
# there for narrow N (768) where big tiles leave SMs idle.
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 5},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 5},
    # PERSISTENT=1: gemm_tma.py's kernel (TMA loads, one program per SM; elsewhere these tiles
    # through this module's kernel). Y_TMA=1: Y leaves through one TMA box where it fits in
    # shared memory (benchmarks/kernels_gemm_store.py, H200 2026-11-27: 1.02x-1.05x on these two
    # tilings, 0.97x-1.04x on the 8-warp 128x128 one, which keeps the pointer store).
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "PERSISTENT": 1,
     "Y_TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "PERSISTENT": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "PERSISTENT": 1,
     "Y_TMA": 1},
)

@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """The (row, column) tile of program `pid` in grouped order: GROUP_M tile rows are walked
    column by column, so consecutive programs reuse the same A rows (and B columns) in L2.
    Shared by the float, quantized and convolution GEMM kernels."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows_in_group, (pid % per_group) // rows_in_group


@triton.jit
def epilogue_value(acc, offs_n, rn, N, res, BIAS, QINV, QZP, alpha, p0, p1, HAS_BIAS: tl.constexpr,
                   HAS_RES: tl.constexpr, ACT: tl.constexpr, QUANT: tl.constexpr, Q_PER_CHANNEL: tl.constexpr,
                   Q_HAS_ZP: tl.constexpr, FLOAT8: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """The float32 accumulator tile (columns offs_n; rn: offs_n wrapped into range) as Y holds it:
    alpha, bias per column, residual (`res`, the tile as loaded), activation; the float32 value,
    or (QUANT) QuantizeLinear's codes (int8/uint8; float8 as its uint8 bits) for kiln::MatMulQuantize."""
    acc = acc * alpha
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if HAS_RES:
        acc = acc + res.to(tl.float32)
    # The activation exactly as for a float store: before a quantizing store with SmoothQuant's
    # per-channel scales an approximation's error is divided by scales as small as 1e-4 (the tanh
    # form of Gelu, 4.7e-4 from exact, then moves codes by several steps, and the tuner rejects it).
    acc = activate(acc, ACT, p0, p1)
    if QUANT:  # kiln::MatMulQuantize: QuantizeLinear's codes of the float32 value
        # times 1 / y_scale (quantize.reciprocal_of): a multiply where QuantizeLinear divides Y rounded
        # to its type, one step apart at most near a rounding boundary (compiler/tolerance.py's rule
        # for this op), for a store that costs no more than a 16-bit one.
        zp = 0
        if Q_PER_CHANNEL:
            inv = tl.load(QINV + rn)[None, :]
            if Q_HAS_ZP:
                zp = tl.load(QZP + rn)[None, :]
        else:
            inv = tl.load(QINV)
            if Q_HAS_ZP:
                zp = tl.load(QZP)
        acc = requantize(acc * inv, zp, Q_HAS_ZP, FLOAT8, QMIN, QMAX)
    return acc


@triton.jit
def store_epilogue(acc, offs_m, offs_n, rn, M, N, BIAS, RES, Y, QINV, QZP, stride_ym, alpha, p0, p1,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, QUANT: tl.constexpr,
                   Q_PER_CHANNEL: tl.constexpr, Q_HAS_ZP: tl.constexpr, FLOAT8: tl.constexpr, QMIN: tl.constexpr,
                   QMAX: tl.constexpr):
    """epilogue_value's tile [offs_m, offs_n] stored to Y through pointers (the residual read the
    same way), masked at M and N; Y rounded to its type."""
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)                     # [BLOCK_M, BLOCK_N]
    offs_y = offs_m[:, None] * stride_ym + offs_n[None, :]                   # Y and RES: same strides
    res = 0.0
    if HAS_RES:
        res = tl.load(RES + offs_y, mask=mask, other=0.0)
    v = epilogue_value(acc, offs_n, rn, N, res, BIAS, QINV, QZP, alpha, p0, p1, HAS_BIAS, HAS_RES, ACT, QUANT,
                       Q_PER_CHANNEL, Q_HAS_ZP, FLOAT8, QMIN, QMAX)
    tl.store(Y + offs_y, v.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_epilogue_kernel(
        A, B, BIAS, RES, Y, QINV, QZP, M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_ym,
        alpha, p0, p1,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, IEEE: tl.constexpr,
        EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, QUANT: tl.constexpr = False, Q_PER_CHANNEL: tl.constexpr = False,
        Q_HAS_ZP: tl.constexpr = False, FLOAT8: tl.constexpr = False, QMIN: tl.constexpr = 0, QMAX: tl.constexpr = 0,
        PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                         # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                         # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)                                           # [BLOCK_K]
    # Wrapped indices: rows/cols past the edge re-read valid memory and are never stored. No
    # contiguity hints: Triton derives them from N's divisibility, and a hint would be false
    # at the wrap when N is not a multiple of the vector width.
    rm = offs_m % M
    rn = offs_n % N
    a_ptrs = A + rm[:, None] * stride_am + offs_k[None, :] * stride_ak       # [BLOCK_M, BLOCK_K]
    b_ptrs = B + offs_k[:, None] * stride_bk + rn[None, :] * stride_bn       # [BLOCK_K, BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    store_epilogue(acc, offs_m, offs_n, rn, M, N, BIAS, RES, Y, QINV, QZP, stride_ym, alpha, p0, p1,
                   HAS_BIAS, HAS_RES, ACT, QUANT, Q_PER_CHANNEL, Q_HAS_ZP, FLOAT8, QMIN, QMAX)


def _check(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, trans_b: int) -> None:
    assert a.dtype in DTYPES and b.dtype == a.dtype, f"A and B must share a float dtype, got {a.dtype}, {b.dtype}"
    assert a.dim() >= 2 and b.dim() == 2, f"A must be [..., M, K] and B 2-D, got {tuple(a.shape)}, {tuple(b.shape)}"
    k_b = b.shape[1] if trans_b else b.shape[0]
    assert a.shape[-1] == k_b, f"K differs: A {tuple(a.shape)}, B {tuple(b.shape)}, trans_b={trans_b}"
    n = b.shape[0] if trans_b else b.shape[1]
    if bias is not None:
        assert bias.dtype == a.dtype and tuple(bias.shape) == (n,), f"bias must be [{n}] {a.dtype}"
    if residual is not None:
        assert residual.dtype == a.dtype, f"residual must be {a.dtype}, got {residual.dtype}"
    for t in (a, b, residual):
        assert t is None or t.numel() < 2**31, "operands of 2**31 elements or more overflow int32 offsets"


def fused_matmul(a: Tensor, b: Tensor, bias: Tensor | None = None, residual: Tensor | None = None, *,
                 trans_b: int = 0, alpha: float = 1.0, activation: str = "",
                 activation_params: Sequence[float] = (), config: dict[str, Any] | None = None) -> Tensor:
    """Y = act(alpha * A @ B' + bias + residual) in one kernel; A [..., M, K], B [K, N] or [N, K]."""
    return _launch(a, b, bias, residual, trans_b, alpha, activation, activation_params, config, None)


def matmul_quantize(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, y_scale: Tensor,
                    y_zero_point: Tensor | None = None, *, trans_b: int = 0, alpha: float = 1.0,
                    activation: str = "", activation_params: Sequence[float] = (), output_dtype: int = 0,
                    precision: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """kiln::MatMulQuantize (kernels/reference/matmul_quantize.py): fused_matmul's Y quantized in
    the store (per tensor, or per column of Y's last axis); Y itself is never written. The codes
    are those of the float32 epilogue value times 1 / y_scale (store_epilogue), within one step
    of QuantizeLinear's of Y rounded to A's type (compiler/tolerance.py's rule for the op)."""
    n = b.shape[0] if trans_b else b.shape[1]
    assert y_scale.numel() in (1, n) and (y_zero_point is None or y_zero_point.numel() == y_scale.numel()), \
        f"MatMulQuantize quantizes per tensor or per output column ({n}); y_scale has {y_scale.numel()} elements"
    out = quantized_dtype(y_zero_point, output_dtype)
    return _launch(a, b, bias, residual, trans_b, alpha, activation, activation_params, config,
                   (out, y_scale, y_zero_point, _division_dtype(y_scale, precision)))


def _launch(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, trans_b: int, alpha: float,
            activation: str, activation_params: Sequence[float], config: dict[str, Any] | None,
            quantized: tuple[torch.dtype, Tensor, Tensor | None, torch.dtype] | None) -> Tensor:
    """The GEMM kernel on [M, K] @ [K, N]; `quantized` (type, scale, zero point, division type)
    makes it store QuantizeLinear's codes of Y in that type instead of Y."""
    _check(a, b, bias, residual, trans_b)
    cfg = dict(CONFIGS[0] if config is None else config)
    lead, k = tuple(a.shape[:-1]), a.shape[-1]
    a2 = a.reshape(math.prod(lead), k)                                       # [M, K]
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    w = b.t() if trans_b else b                                              # [K, N] (a view)
    m, n = a2.shape[0], w.shape[1]
    y = torch.empty((m, n), dtype=a.dtype if quantized is None else quantized[0], device=a.device)  # [M, N]
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    if k == 0:  # an empty sum: the epilogue alone
        a2, w = a2.new_zeros((m, 1)), w.new_zeros((1, n))
        k = 1
    q = NO_QUANT if quantized is None else quant_out(y, quantized[1], quantized[2], quantized[3])
    # [M, N], row-major like Y: the kernel addresses both with Y's offsets.
    r2 = y if residual is None else residual.expand(*lead, n).reshape(m, n).contiguous()
    code, p0, p1 = activation_code(activation, activation_params)
    pointers = (y if bias is None else bias, r2, y if q.codes is None else q.codes,
                *(y if t is None else t for t in (q.inverse, q.zero_point)))
    flags = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=code, BLOCK_M=cfg["BLOCK_M"],
                 BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"], QUANT=quantized is not None,
                 Q_PER_CHANNEL=q.per_column, Q_HAS_ZP=q.zero_point is not None, FLOAT8=q.fp8, QMIN=q.qmin, QMAX=q.qmax,
                 num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg.get("PERSISTENT") and a.shape[-1] > 0:
        from kiln.kernels.triton import gemm_tma  # (it imports this module's epilogue)
        if gemm_tma.applies(a2, b):
            gemm_tma.launch(a2, b, trans_b, pointers, m, n, k, y.stride(0), float(alpha), p0, p1, flags,
                            bool(cfg.get("Y_TMA")))
            return y.reshape(*lead, n)
    grid = (triton.cdiv(m, flags["BLOCK_M"]) * triton.cdiv(n, flags["BLOCK_N"]),)
    _gemm_epilogue_kernel[grid](
        a2, w, *pointers, m, n, k, a2.stride(0), a2.stride(1), w.stride(0), w.stride(1), y.stride(0),
        float(alpha), p0, p1, IEEE=a.dtype == torch.float32, EVEN_K=k % flags["BLOCK_K"] == 0, **flags,
        **launch_options(a2))
    return y.reshape(*lead, n)

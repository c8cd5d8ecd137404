"""Tactics for kiln::QMatMul and QuantizeLinear: a Triton int8/fp8 GEMM, cuBLASLt fp8 through
torch._scaled_mm, and a Triton QuantizeLinear.

kiln::QMatMul.triton and .triton_fp8 (kernels/triton/qgemm.py): int8/uint8 x int8/uint8 ->
int32, or float8_e4m3fn x float8_e4m3fn -> float32, on tensor cores (one tactic per input
type, each with its own tuning space: fp8 also sets how its accumulator is promoted and, for
a Gelu whose output is float8 codes, whether it runs on the hardware tanh), the
whole epilogue (scales, the mid quantization of ONNX Runtime's MatMul -> Q -> DQ -> Add(bias),
bias, residual, activation, float output or requantization) in the store. The weight is handed over K-major ([N, K] contiguous), what 8-bit tensor-core operands
want: a [K, N] weight (trans_b=0) is transposed once and memoised per weight tensor
(`k_major`), as tactics/conv.py memoises channels-last weights. A's leading dims fold into M.

kiln::QMatMul.triton_splitk and .triton_fp8_splitk (kernels/triton/qgemm_splitk.py): the same
arithmetic split over K, partial tiles summed by a second kernel that runs the epilogue, for
the layers `few_tiles_long_k` takes (a classifier over a batch: few output tiles, a long K);
symmetric int8 or float8 operands (the launcher refuses a non-zero zero point, which the tuner
then skips). Registered after the one-pass tactics: the tuner times them side by side.

kiln::QMatMul.scaled_mm: fp8 x fp8 through torch._scaled_mm (cuBLASLt; sm_89+). Its
constraints, and what this tactic does with them:
  - A row-major [M, K], B column-major [K, N] (the K-major weight's transpose), K and N
    multiples of 16: required by supports.
  - scales: per-tensor a_scale with per-tensor b_scale is "tensorwise" (two float32
    scalars); a per-channel b_scale is "rowwise" (scale_a [M, 1], scale_b [1, N], float32).
    cuBLASLt does rowwise from CUDA 12.9 on sm_90+, any float output; elsewhere torch's
    CUTLASS fallback is sure only of bfloat16 output, so supports asks for that there.
  - bias: fused only into a float16/bfloat16 output of its own dtype (cuBLASLt refuses a
    bias with float32 output); otherwise added after the call.
  - no mid quantization (a layer with one is not taken);
  - no residual, activation or requantization: done after the call in torch, on the
    output (float output) or on a float32 output (requantized: the reference's own
    requantization, in float32).
  - accumulation: two configs, cuBLASLt's precise fp8 mode (fast_accum 0, the default when
    tuning is off) and its fast accumulation (fast_accum 1, the MMA's own accumulator
    throughout), which the tuner keeps only where the output meets the tolerance.
The result is the reference's up to float32 rounding, and the float output's rounding after
the scale and again after bias/residual (within the fp16/bf16 tolerance).

QuantizeLinear.triton (kernels/triton/quantize.py): per-tensor scale and zero point,
float16/bfloat16/float32 in, int8/uint8/float8_e4m3fn out, bit-exact, in X's memory format.

All run on CUDA only; fp8 operands or outputs need compute capability 8.9+, asked of torch
(`device_capability`) when the query is for cuda.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from kiln.ir import dtypes
from kiln.kernels.memo import derived, derived_table
from kiln.kernels.reference.fused import ACTIVATIONS as TORCH_ACTIVATIONS
from kiln.kernels.reference.fused import apply_activation
from kiln.kernels.reference.quantize import per_last_axis
from kiln.kernels.reference.quantized import FP8_EXACT_K, QMATMUL_INPUTS, requantize
from kiln.kernels.triton import available as triton_available
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Tensor = torch.Tensor

INTS = dtypes.CODE_NAMES
FP8 = "float8_e4m3fn"
REQUANT_TYPES = ("int8", "uint8", FP8)
# Input positions of kiln::QMatMul.
A, B, A_SCALE, A_ZP, B_SCALE, B_ZP, BIAS, RESIDUAL, OUT_SCALE, OUT_ZP, MID_SCALE, MID_ZP, TABLE = range(len(QMATMUL_INPUTS))
# K a multiple of 16 (static): 16-byte rows for 8-bit operands, which the Triton GEMM needs to
# pipeline its K loop (tactics/matmul.py's TRITON_ALIGN); _scaled_mm requires it of N too.
ALIGN = 16
# torch._scaled_mm's accumulation modes (module docstring); the first is the untuned default.
SCALED_MM_CONFIGS: tuple[dict[str, int], ...] = ({"fast_accum": 0}, {"fast_accum": 1})
# Longest int8 reduction of the Triton GEMM (int32 sums; kernels/triton/qgemm.py MAX_K).
TRITON_MAX_K = 16384


def device_capability() -> tuple[int, int] | None:
    """The current CUDA device's compute capability, or None where torch sees no CUDA device."""
    try:
        if not torch.cuda.is_available():
            return None
        return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]
    except (RuntimeError, AssertionError):
        return None


# --- the K-major weight ------------------------------------------------------------------------

# weight tensor -> {trans_b: its K-major copy} (kernels/memo.py)
_K_MAJOR = derived_table()


def k_major(b: Tensor, trans_b: int) -> Tensor:
    """The weight as [N, K] with K contiguous: a view when it is stored so, else a memoised copy."""
    w = b if trans_b else b.t()
    if w.is_contiguous():
        return w
    return derived(_K_MAJOR, b, trans_b, lambda _: w.contiguous())


def cached_weights() -> int:
    """How many K-major weight copies are alive (for tests and memory reports)."""
    return len(_K_MAJOR)


# scale tensor -> {shape: float32 copy} (kernels/memo.py): _scaled_mm's scale operands, made once
# per engine constant rather than by two copy kernels per call.
_SCALES = derived_table()


def scale_operand(scale: Tensor, shape: tuple[int, ...]) -> Tensor:
    """`scale` (one element, or per column for shape (1, N)) as a contiguous float32 tensor of
    `shape`, memoised per scale tensor and shape."""
    def make(t: Tensor) -> Tensor:
        source = t.to(torch.float32)
        return source.reshape(()) if shape == () else source.reshape(1, -1).expand(shape).contiguous()
    return derived(_SCALES, scale, shape, make)


# --- kernels -----------------------------------------------------------------------------------

def triton_qmatmul(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
                   b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
                   out_scale: Tensor | None = None, out_zp: Tensor | None = None, mid_scale: Tensor | None = None,
                   mid_zp: Tensor | None = None, table: Tensor | None = None, *, trans_b: int = 0,
                   activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
                   dynamic: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """kiln::QMatMul as the Triton GEMM on the K-major weight."""
    from kiln.kernels.triton.qgemm import qmatmul

    return qmatmul(a_q, k_major(b_q, trans_b), a_scale, a_zp, b_scale, b_zp, bias, residual, out_scale, out_zp,
                   mid_scale, mid_zp, table, trans_b=1, activation=activation, activation_params=activation_params,
                   out_dtype=out_dtype, dynamic=dynamic, config=config)


def scaled_mm_qmatmul(a_q: Tensor, b_q: Tensor, a_scale: Tensor, a_zp: Tensor | None, b_scale: Tensor,
                      b_zp: Tensor | None = None, bias: Tensor | None = None, residual: Tensor | None = None,
                      out_scale: Tensor | None = None, out_zp: Tensor | None = None, *, trans_b: int = 0,
                      activation: str = "", activation_params: Sequence[float] = (), out_dtype: int = 0,
                      dynamic: int = 0, config: dict[str, Any] | None = None) -> Tensor:
    """kiln::QMatMul for fp8 as one torch._scaled_mm (cuBLASLt) plus the epilogue it cannot fuse."""
    assert a_q.dtype == b_q.dtype == torch.float8_e4m3fn and a_zp is None and b_zp is None, \
        "QMatMul.scaled_mm takes float8_e4m3fn A and B without zero points"
    lead, k = tuple(a_q.shape[:-1]), a_q.shape[-1]
    m = math.prod(lead)
    a2 = a_q.reshape(m, k).contiguous()                                      # [M, K] row-major
    w = k_major(b_q, trans_b).t()                                            # [K, N] column-major
    n = w.shape[1]
    mm_dtype = a_scale.dtype if out_scale is None else torch.float32
    if b_scale.numel() == 1:   # tensorwise
        sa, sb = scale_operand(a_scale, ()), scale_operand(b_scale, ())
    else:                      # rowwise: [M, 1] and [1, N]
        sa, sb = scale_operand(a_scale, (m, 1)), scale_operand(b_scale, (1, n))
    fused_bias = bias is not None and mm_dtype != torch.float32 and bias.dtype == mm_dtype and bias.numel() == n
    y = torch._scaled_mm(a2, w, sa, sb, bias=bias.reshape(n) if fused_bias else None, out_dtype=mm_dtype,
                         use_fast_accum=bool((config or SCALED_MM_CONFIGS[0]).get("fast_accum", 0)))
    if bias is not None and not fused_bias:
        y.add_(bias.reshape(-1))
    if residual is not None:
        y.add_(residual.expand(*lead, n).reshape(m, n))
    if activation:
        y = apply_activation(y, activation, list(activation_params))
    if out_scale is not None:
        y = requantize(y, out_scale, out_zp, out_dtype)   # the reference's rounding, on float32
    return y.reshape(*lead, n)


def triton_qmatmul_splitk(a_q: Tensor, b_q: Tensor, *args: Any, trans_b: int = 0, **kwargs: Any) -> Tensor:
    """kiln::QMatMul split over K (kernels/triton/qgemm_splitk.py) on the K-major weight."""
    from kiln.kernels.triton.qgemm_splitk import qmatmul_splitk

    return qmatmul_splitk(a_q, k_major(b_q, trans_b), *args, trans_b=1, **kwargs)


# --- supports ----------------------------------------------------------------------------------

def _dtype(q: TacticQuery, i: int) -> str | None:
    return q.input_dtypes[i] if i < len(q.input_dtypes) else None


def _shape(q: TacticQuery, i: int) -> tuple[int | str, ...] | None:
    return q.input_shapes[i] if i < len(q.input_shapes) else None


def _one(q: TacticQuery, i: int) -> bool:
    """Input i has a known shape of one element (per tensor)."""
    s = _shape(q, i)
    return s is not None and all(d == 1 for d in s)


def _per_channel(q: TacticQuery, i: int, n: int | str) -> bool:
    """Input i is one element or [N] (per output channel), by its known shape."""
    s = _shape(q, i)
    return _one(q, i) or (s is not None and len(s) == 1 and s[0] == n)


def _out_type(q: TacticQuery) -> str | None:
    """The requantized type's name (None: float output), as the reference picks it."""
    if _dtype(q, OUT_SCALE) is None:
        return None
    code = int(q.attrs.get("out_dtype", 0) or 0)
    if code:
        try:
            return dtypes.from_onnx(code).name
        except TypeError:
            return "unknown"
    return _dtype(q, OUT_ZP) or "uint8"


def _residual_fits(q: TacticQuery, n: int | str) -> bool:
    """No residual, or one whose known shape broadcasts into Y's without growing it."""
    if _dtype(q, RESIDUAL) is None:
        return True
    r, a = _shape(q, RESIDUAL), _shape(q, A)
    if r is None or a is None:
        return False
    out = (*a[:-1], n)
    return len(r) <= len(out) and all(rd == od or rd == 1 for rd, od in zip(reversed(r), reversed(out)))


def _layer_ok(q: TacticQuery, fp8: bool, per_channel_out: bool = False) -> tuple[int | str, int | str] | None:
    """(K, N) when the node's ranks, parameters and epilogue fit both GEMM tactics, else None:
    A [..., M, K], B 2-D, float scales (a_scale per tensor, b_scale per tensor or channel),
    zero points per tensor/channel (none for float8), a float bias of one or N elements,
    a residual that fits Y, and a requantization (if any) to int8/uint8/float8_e4m3fn, per
    tensor (or, with `per_channel_out`, per output channel: out_zp then out_scale's shape)."""
    a, b = _shape(q, A), _shape(q, B)
    if a is None or b is None or len(a) < 2 or len(b) != 2:
        return None
    trans_b = int(q.attrs.get("trans_b", 0))
    k, n = a[-1], b[0] if trans_b else b[1]
    if _dtype(q, A_SCALE) not in dtypes.FLOAT_NAMES or not _one(q, A_SCALE):
        return None
    if _dtype(q, B_SCALE) not in dtypes.FLOAT_NAMES or not _per_channel(q, B_SCALE, n):
        return None
    if fp8 and (_dtype(q, A_ZP) is not None or _dtype(q, B_ZP) is not None):
        return None
    if _dtype(q, A_ZP) is not None and (_dtype(q, A_ZP) not in INTS or not _one(q, A_ZP)):
        return None
    if _dtype(q, B_ZP) is not None and (_dtype(q, B_ZP) not in INTS or not _per_channel(q, B_ZP, n)):
        return None
    if _dtype(q, BIAS) is not None and (_dtype(q, BIAS) not in dtypes.FLOAT_NAMES or not _per_channel(q, BIAS, n)):
        return None
    if _dtype(q, RESIDUAL) not in (None, *dtypes.FLOAT_NAMES) or not _residual_fits(q, n):
        return None
    if _dtype(q, MID_SCALE) is not None and (  # mid scale (and zero point) per tensor, or per column
            _dtype(q, MID_SCALE) not in dtypes.FLOAT_NAMES or not _per_channel(q, MID_SCALE, n)
            or _dtype(q, MID_ZP) not in (None, *INTS)
            or (_dtype(q, MID_ZP) is not None and not (
                _one(q, MID_ZP) if _one(q, MID_SCALE) else _shape(q, MID_ZP) == _shape(q, MID_SCALE)))):
        return None
    out = _out_type(q)
    if _dtype(q, TABLE) is not None and (out not in INTS or _dtype(q, TABLE) not in INTS or _shape(q, TABLE) != (256,)):
        return None   # a code table: 256 int8/uint8 entries, read by the int8/uint8 codes
    if out is not None:
        scale_ok = _one(q, OUT_SCALE) or (per_channel_out and _per_channel(q, OUT_SCALE, n))
        zp_ok = _dtype(q, OUT_ZP) is None or (_dtype(q, OUT_ZP) in REQUANT_TYPES and (
            _one(q, OUT_ZP) if _one(q, OUT_SCALE) else _shape(q, OUT_ZP) == _shape(q, OUT_SCALE)))
        if out not in REQUANT_TYPES or _dtype(q, OUT_SCALE) not in dtypes.FLOAT_NAMES or not scale_ok or not zp_ok:
            return None
    return k, n


def _aligned(d: int | str, limit: int) -> bool:
    """A static dim that is a multiple of ALIGN and at most `limit` (symbolic dims: unknown, no)."""
    return isinstance(d, int) and d % ALIGN == 0 and d <= limit


def supports_triton_qmatmul(q: TacticQuery) -> bool:
    """int8/uint8 A and B (sm_80+); K a static multiple of 16, N static (any: the kernels mask
    the last column tile, e.g. a classifier's 1000 classes)."""
    return _dtype(q, A) in INTS and _dtype(q, B) in INTS and _supports_triton(q, fp8=False)


def supports_triton_qmatmul_fp8(q: TacticQuery) -> bool:
    """float8_e4m3fn A and B (sm_89+); K a static multiple of 16, N static."""
    return _dtype(q, A) == _dtype(q, B) == FP8 and _supports_triton(q, fp8=True)


def _supports_triton(q: TacticQuery, fp8: bool) -> bool:
    from kiln.kernels.triton.activation import ACTIVATIONS as TRITON_ACTIVATIONS

    if q.device != "cuda" or q.attrs.get("activation", "") not in TRITON_ACTIVATIONS:
        return False
    cap = device_capability()
    if cap is None or cap < (8, 0) or ((fp8 or _out_type(q) == FP8) and cap < (8, 9)):
        return False
    kn = _layer_ok(q, fp8, per_channel_out=True)
    if kn is None:
        return False
    return _aligned(kn[0], FP8_EXACT_K if fp8 else TRITON_MAX_K) and isinstance(kn[1], int) and 0 < kn[1] < 2**31


def supports_scaled_mm(q: TacticQuery) -> bool:
    """float8_e4m3fn A and B on sm_89+, K and N static multiples of 16; rowwise scales (a
    per-channel b_scale) need cuBLASLt's (CUDA 12.9+ on sm_90+) or a bfloat16 output."""
    if q.device != "cuda" or _dtype(q, A) != FP8 or _dtype(q, B) != FP8 or _dtype(q, MID_SCALE) is not None \
            or _dtype(q, TABLE) is not None or q.attrs.get("dynamic"):   # (its scale operands are memoised)
        return False
    if q.attrs.get("activation", "") not in TORCH_ACTIVATIONS:
        return False
    cap = device_capability()
    if cap is None or cap < (8, 9):
        return False
    kn = _layer_ok(q, True)
    if kn is None or not (_aligned(kn[0], FP8_EXACT_K) and _aligned(kn[1], 2**31)):
        return False
    if _one(q, B_SCALE):
        return True
    out_float = _dtype(q, A_SCALE) if _out_type(q) is None else "float32"
    return out_float == "bfloat16" or (cap >= (9, 0) and _cuda_at_least(12, 9))


def _cuda_at_least(major: int, minor: int) -> bool:
    version = torch.version.cuda
    if not version:
        return False
    parts = tuple(int(p) for p in version.split(".")[:2])
    return parts >= (major, minor)


def supports_triton_quantize(q: TacticQuery) -> bool:
    """QuantizeLinear per tensor or per channel of X's last axis: float16/bfloat16/float32 X, a
    float scale (division in it or in `precision`), int8/uint8/float8_e4m3fn out (float8:
    saturate=1, sm_89+)."""
    if q.device != "cuda" or _dtype(q, 0) not in dtypes.FLOAT_NAMES or _dtype(q, 1) not in dtypes.FLOAT_NAMES:
        return False
    if int(q.attrs.get("block_size", 0) or 0) != 0:
        return False
    x, scale = _shape(q, 0), _shape(q, 1)
    if not _one(q, 1) and not (x is not None and scale is not None and all(isinstance(d, int) for d in scale)
                               and isinstance(x[-1] if x else None, int)
                               and per_last_axis(x, scale, int(q.attrs.get("axis", 1)))):
        return False
    zp = _dtype(q, 2)
    if zp is not None and (zp not in REQUANT_TYPES or not (_one(q, 2) and _one(q, 1) or _shape(q, 2) == scale)):
        return False
    precision, code = int(q.attrs.get("precision", 0) or 0), int(q.attrs.get("output_dtype", 0) or 0)
    try:
        if precision and dtypes.from_onnx(precision).name not in dtypes.FLOAT_NAMES:
            return False
        out = dtypes.from_onnx(code).name if code else (zp or "uint8")
    except TypeError:  # an element type kiln does not know
        return False
    if out not in REQUANT_TYPES:
        return False
    cap = device_capability()
    if cap is None or cap < (8, 0):
        return False
    return out != FP8 or (int(q.attrs.get("saturate", 1)) == 1 and cap >= (8, 9))


def few_tiles_long_k(q: TacticQuery) -> bool:
    """Whether split-K (kernels/triton/qgemm_splitk.py) is for this GEMM: static M (A's leading
    dims), N and K, at most MAX_TILES output tiles of 64 x 64, K at least MIN_K; int8 or float8 A
    and B alike, no mid quantization, code table or run-time zero point."""
    from kiln.kernels.triton.qgemm_splitk import MAX_TILES, MIN_K

    a, b = _shape(q, A), _shape(q, B)
    if a is None or b is None or _dtype(q, A) not in ("int8", FP8) or _dtype(q, B) != _dtype(q, A):
        return False
    if _dtype(q, MID_SCALE) is not None or _dtype(q, TABLE) is not None or q.attrs.get("dynamic"):
        return False
    n = b[0] if int(q.attrs.get("trans_b", 0)) else b[-1]
    if not all(isinstance(d, int) for d in (*a, n)):
        return False
    m = math.prod(a[:-1])
    return -(-m // 64) * -(-n // 64) <= MAX_TILES and a[-1] >= MIN_K


# Registration order is the untuned build's choice (compiler/lower.py takes the first
# candidate): the Triton GEMM, which fuses every epilogue, before scaled_mm.
if triton_available():
    from kiln.kernels.triton import qgemm_space as _space
    from kiln.kernels.triton import quantize as _quantize

    register_tactic(Tactic("kiln::QMatMul.triton", "kiln::QMatMul", 2, ("cuda",), triton_qmatmul,
                           supports_triton_qmatmul, configs=_space.INT8_CONFIGS))
    register_tactic(Tactic("kiln::QMatMul.triton_fp8", "kiln::QMatMul", 2, ("cuda",), triton_qmatmul,
                           supports_triton_qmatmul_fp8, configs=_space.FP8_CONFIGS))
    register_tactic(Tactic("QuantizeLinear.triton", "QuantizeLinear", 2, ("cuda",), _quantize.quantize_linear,
                           supports_triton_quantize, configs=_quantize.CONFIGS))

register_tactic(Tactic("kiln::QMatMul.scaled_mm", "kiln::QMatMul", 1, ("cuda",), scaled_mm_qmatmul,
                       supports_scaled_mm, configs=SCALED_MM_CONFIGS))


# After the one-pass tactics (an untuned build keeps those): the tuner times these beside them on
# the layers `few_tiles_long_k` takes.
if triton_available():
    from kiln.kernels.triton import qgemm_splitk as _splitk

    register_tactic(Tactic("kiln::QMatMul.triton_splitk", "kiln::QMatMul", 1, ("cuda",), triton_qmatmul_splitk,
                           lambda q: supports_triton_qmatmul(q) and few_tiles_long_k(q),
                           configs=_splitk.INT8_CONFIGS))
    register_tactic(Tactic("kiln::QMatMul.triton_fp8_splitk", "kiln::QMatMul", 1, ("cuda",), triton_qmatmul_splitk,
                           lambda q: supports_triton_qmatmul_fp8(q) and few_tiles_long_k(q),
                           configs=_splitk.FP8_CONFIGS))

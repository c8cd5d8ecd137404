"""kiln::QDQAttention in one generated Triton kernel (the oracle: kernels/reference/qdq_attention.py).

A program holds BLOCK_M query rows of one (batch, head). The chain's quantization points need the
softmax's row maximum and sum before any probability is quantized, which a one-pass online
softmax does not have: up to MAX_KEYS keys are one tile (ONE_TILE: the scores once, maximum and
sum at once); past it the kernel walks the keys twice, BLOCK_N at a time, first for the row's
maximum and sum (online, rescaled as the maximum grows: the sum in another order, as below),
then recomputing the scores for the probabilities and P V. Per tile:

  codes -> q/k/v programs (DQ) -> scores = Q K^T (tensor cores, float32 sums, rounded to the
  MatMul's type) -> score program (with the mask) -> softmax in float32 (exp as torch's expf,
  the correctly rounded division torch's kernel does), rounded to its type -> probability
  program -> P V (rounded to the MatMul's type) -> QuantizeLinear's codes (quantize_code: the
  division in the scale's type, ties to even, saturated) -> stored.

The programs become Triton functions of held values (pointwise_function: the Pointwise kernel's
own arithmetic, op by op as the reference rounds it, constants as kernel parameters), so each
step rounds as the reference op it replaced does. What the kernel cannot reproduce is the order
of the two products' and the softmax's sums (cuBLAS's and torch's own), which moves a 16-bit
value by an ulp now and then, and a quantized value then by one step: the tuner's allowance for
quantized attention (compiler/tolerance.py).

Configs with EXACT 0 take the quick way within that allowance: each QuantizeLinear in the
programs multiplies by the reciprocal of its scale instead of dividing correctly rounded
(pointwise_ops.quantize_value), and the softmax takes tl.exp (ex2.approx, a few ulp) and
multiplies by its row's reciprocal sum (div_rn, once a row) instead of torch's expf and a
correctly rounded division per element; every 16-bit rounding kept: a code moves only where a
value lies within a few float32 ulp of a rounding boundary. (BERT-base b32 on an H200,
benchmarks/kernels_qdq_attention.py: the exact softmax took 33.7 - 25.8 us of the quick kernel,
the score chain's Q/DQ ~8 us, the probabilities' ~2.4 us; SDPA 15.3 us on the same shapes.)
Not rounding the 16-bit values was tried and
dropped: the chain's values are few (codes), so an intermediate that falls on the other side of
a boundary (a masked score's constant, a probability 1 / n) moves every element holding it at
once, and the output by several steps. The exact kernel spends its time in the per-element
chain (16-bit round trips, the divisions), not in the products; the tuner keeps the quick one
where its outputs pass the rule. A float32 chain (an fp32 engine's) multiplies on tensor cores as
three TF32 products a pair (input_precision "tf32x3": float32's accuracy, the sums in another
order as above); IEEE float32 operands took the CUDA cores (sm_90: 4.6x the instructions, most
of them spills). Q, K and V are read through their strides as
[B, H, L, D] (transposed views of one GEMM output); Y [B, H, Lq, D] is stored [B, Lq, H, D] in memory.
"""
from __future__ import annotations

from typing import Any

import torch
import triton

from kiln.kernels.reference.quantized import requantized_type
from kiln.kernels.triton.generated import compile_source
from kiln.kernels.triton.pointwise import program_key
from kiln.kernels.triton.pointwise_function import ProgramFunction, program_function
from kiln.kernels.triton.pdl import launch_options
from kiln.kernels.triton.pointwise_ops import EMITTED_IMPORT, Unsupported
from kiln.kernels.triton.quantize import OUT_TYPES, PRECISIONS, _division_dtype, needed_zero_point, reciprocal_of

Tensor = torch.Tensor
MAX_KEYS = 256
MAX_HEAD_DIM = 128
FLOATS = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32"}
CODES = (torch.int8, torch.uint8)
# BLOCK_N: keys per step where they do not fit one tile (past MAX_KEYS); below, one tile holds them.
# EXACT 0: the quick arithmetic (module docstring). ONNX Runtime's BERT-base b32 chain on an H200
# (benchmarks/kernels_qdq_attention.py, 2026-11-28 20:46 UTC), us: quick 128x64/8 warps 25.3,
# 64x64/4 31.8, 32x128/4 34.6; exact 64x64/4 40.6, 32x128/4 51.5 (quick 64x64/8 warps, 66 in an
# earlier tuning, dropped).
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "EXACT": 0},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "EXACT": 0},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "EXACT": 0},
)
IDENTITY = [["Identity", ["i0"], {}]]

_KERNEL = '''
@triton.jit
def kiln_qdq_attention(Q, K, V, MASK, Y, OS, OINV, OZP, H, Lq, Lk, D,
                       sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, syb, syh, sym, smb, smh, smm, smn,
                       {consts}HAS_OZP: tl.constexpr, PREC: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
                       ONE_TILE: tl.constexpr, FULL: tl.constexpr, MASK_ROW: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    start_m, b, h = query_block(Lq, H, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    if FULL:   # no padding lanes anywhere: the masks are constants, their selects fold away
        m_ok, d_ok = tl.full((BLOCK_M,), 1, tl.int1), tl.full((BLOCK_D,), 1, tl.int1)
    else:
        m_ok, d_ok = offs_m < Lq, offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0).to(tl.int32)
    qf = tl.where(d_ok[None, :], {q_call}, 0.0).to({dot})             # padding lanes out of the sums
    if ONE_TILE:   # every key in one tile: the row's maximum and sum at once
        offs_n = tl.arange(0, BLOCK_N)
{scores8}
        mx = tl.max(s, axis=1)
        e = {exp}(s - mx[:, None])
        p = {ratio}(e, tl.sum(e, axis=1)[:, None])
{pv8}
        y = tl.dot(p, vf{f32_dot})
    else:   # the row's maximum and sum over every key block first (online), then the probabilities
        m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for start_n in range(0, Lk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
{scores12}
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == -float("inf"), 0.0, m_new)    # no key yet: exp(-inf) = 0, not NaN
            l_i = l_i * {exp}(m_i - m_use) + tl.sum({exp}(s - m_use[:, None]), axis=1)
            m_i = m_new
        m_use = tl.where(m_i == -float("inf"), 0.0, m_i)
        y = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for start_n in range(0, Lk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
{scores12}
            p = {ratio}({exp}(s - m_use[:, None]), l_i[:, None])
{pv12}
            y = tl.dot(p, vf, y{f32_dot})
    y = y.to({float}).to(tl.float32)                                    # the P V MatMul's output
{store}
'''
# The scores of one key block [BLOCK_M, BLOCK_N], as the reference's MatMul and score program
# give them; keys past Lk at -inf.
_SCORES = '''if FULL:
    n_ok = tl.full((BLOCK_N,), 1, tl.int1)
else:
    n_ok = offs_n < Lk
k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :], other=0).to(tl.int32)
kf = tl.where(n_ok[:, None] & d_ok[None, :], {k_call}, 0.0).to({dot})
s = tl.dot(qf, tl.trans(kf){f32_dot}).to({float}).to(tl.float32)     # the scores MatMul's output
{mask_load}s = {score_call}
s = tl.where(n_ok[None, :], s.to(tl.float32), -float("inf"))'''
# Softmax's output p rounded to its type, the probability program, and the block's V.
_PV = '''p = p.to({float}).to(tl.float32)
p = tl.where(n_ok[None, :], {prob_call}, 0.0).to({dot})
v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :], other=0).to(tl.int32)
vf = tl.where(n_ok[:, None] & d_ok[None, :], {v_call}, 0.0).to({dot})'''
_MASK = '''if MASK_ROW:   # one row for every query (a padding mask): loaded once, broadcast
    mv = tl.load(MASK + b * smb + h * smh + offs_n[None, :] * smn, mask=n_ok[None, :], other=0){held}
else:
    mv = tl.load(MASK + b * smb + h * smh + offs_m[:, None].to(tl.int64) * smm + offs_n[None, :] * smn,
                 mask=m_ok[:, None] & n_ok[None, :], other=0){held}
'''
_STORE_CODES = '''    zp = 0
    if HAS_OZP:
        zp = tl.load(OZP).to(tl.int32)
    codes = quantize_code(y, in_precision(tl.load(OS).to(tl.float32), PREC), tl.load(OINV), zp, PREC, QMIN, QMAX)
    tl.store(Y + b * syb + h * syh + offs_m[:, None] * sym + offs_d[None, :], codes.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])'''
_STORE_FLOAT = '''    tl.store(Y + b * syb + h * syh + offs_m[:, None] * sym + offs_d[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])'''
_HEADER = f'''"""Generated by kiln.kernels.triton.qdq_attention; do not edit."""
import triton
import triton.language as tl
from kiln.kernels.triton.attention import query_block
from kiln.kernels.triton.quantize import divide
from kiln.kernels.triton.pdl import wait_for_inputs
{EMITTED_IMPORT}


@triton.jit
def softmax_ratio(e, total):
    """e / total correctly rounded (torch's division), from one division per row (quantize.divide)."""
    return divide(e, total, tl.math.div_rn(tl.full(total.shape, 1.0, tl.float32), total))


@triton.jit
def softmax_ratio_quick(e, total):
    """e / total within an ulp or so: e times the row's correctly rounded reciprocal (EXACT 0)."""
    return e * tl.math.div_rn(tl.full(total.shape, 1.0, tl.float32), total)

'''


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def _call(name: str, fn: ProgramFunction, args: str, prefix: str) -> str:
    return f"{name}({', '.join([args] + [f'{prefix}{i}' for i in range(len(fn.constants))])})"


def generate(programs: dict[str, Any], q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
             quantized: bool, exact: bool = True) -> tuple[str, list[float | int], torch.dtype]:
    """(the kernel module's source, its constant arguments in order, the chain's float type);
    `exact` False: the programs the quick way (module docstring)."""
    functions = {name: program_function(f"{name}_program", programs.get(f"{name}_program") or IDENTITY, [t.dtype],
                                        [t.shape], exact)
                 for name, t in (("q", q), ("k", k), ("v", v))}
    fp = functions["q"].out_dtype
    if fp not in FLOATS or functions["k"].out_dtype != fp or functions["v"].out_dtype != fp:
        raise Unsupported(f"Q, K and V dequantized to {[f.out_dtype for f in functions.values()]}")
    scores_shape = (*q.shape[:-1], k.shape[-2])
    score_in = [fp] + ([mask.dtype] if mask is not None else [])
    functions["score"] = program_function("score_program", programs.get("score_program") or IDENTITY, score_in,
                                          [scores_shape] + ([mask.shape] if mask is not None else []), exact)
    functions["prob"] = program_function("prob_program", programs.get("prob_program") or IDENTITY, [fp],
                                         [scores_shape], exact)
    if functions["score"].out_dtype != fp or functions["prob"].out_dtype != fp:
        raise Unsupported("score or probability program changes the chain's float type")
    prefixes = {"q": "qk", "k": "kk", "v": "vk", "score": "sk", "prob": "pk"}
    consts = [f"{prefixes[n]}{i}" for n, f in functions.items() for i in range(len(f.constants))]
    # a mask as the score program reads it: bool, float, or 8-bit codes it dequantizes itself
    # (ONNX Runtime's QOperator models add the mask with QLinearAdd: onnx/qoperator.py)
    held = "" if mask is None else (" != 0" if mask.dtype == torch.bool else
                                    ".to(tl.int32)" if mask.dtype in CODES else ".to(tl.float32)")
    if mask is not None and mask.dtype not in (torch.bool, *CODES, *FLOATS):
        raise Unsupported(f"a {mask.dtype} mask")
    words = dict(dot=FLOATS[fp], float=FLOATS[fp], f32_dot=', input_precision="tf32x3"' if fp == torch.float32 else "",
                 exp="exp_f32" if exact else "tl.exp", ratio="softmax_ratio" if exact else "softmax_ratio_quick")
    scores = _SCORES.format(**words, k_call=_call("k_program", functions["k"], "k", "kk"),
                            mask_load="" if mask is None else _MASK.format(held=held),
                            score_call=_call("score_program", functions["score"], "s" if mask is None else "s, mv",
                                             "sk"))
    pv = _PV.format(**words, prob_call=_call("prob_program", functions["prob"], "p", "pk"),
                    v_call=_call("v_program", functions["v"], "v", "vk"))
    body = _KERNEL.format(
        **words, consts="".join(f"{c}, " for c in consts), q_call=_call("q_program", functions["q"], "q", "qk"),
        scores8=_indent(scores, 8), scores12=_indent(scores, 12), pv8=_indent(pv, 8), pv12=_indent(pv, 12),
        store=_STORE_CODES if quantized else _STORE_FLOAT)
    source = _HEADER + "\n".join(f.source + "\n" for f in functions.values()) + body
    return source, [c for f in functions.values() for c in f.constants], fp


_GENERATED: dict[tuple[Any, ...], tuple[Any, list[float | int], torch.dtype]] = {}


def _kernel(programs: dict[str, Any], q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, quantized: bool,
            exact: bool):  # noqa: ANN202
    key = (tuple(None if p is None else program_key(p) for p in programs.values()), q.dtype, q.dim(), k.dtype,
           v.dtype, quantized, None if mask is None else (mask.dtype, mask.dim()), exact)
    found = _GENERATED.get(key)
    if found is None:
        source, consts, fp = generate(programs, q, k, v, mask, quantized, exact)
        found = _GENERATED[key] = (compile_source(source, "kiln_qdq_attention"), consts, fp)
    return found


def qdq_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, out_scale: Tensor | None = None,
                  out_zp: Tensor | None = None, *, q_program: Any = None, k_program: Any = None,
                  v_program: Any = None, score_program: Any = None, prob_program: Any = None,
                  out_dtype: int = 0, precision: int = 0, config: dict[str, int] | None = None) -> Tensor:
    """kiln::QDQAttention in one kernel (module docstring): q, k, v [B, H, L, D], Lk <= MAX_KEYS."""
    assert q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "Q, K and V: [B, H, L, D]"
    b, heads, lq, d = q.shape
    lk = k.shape[2]
    assert tuple(k.shape) == (b, heads, lk, d) and tuple(v.shape) == (b, heads, lk, d), \
        f"K and V must be [{b}, {heads}, Lk, {d}]: K {tuple(k.shape)}, V {tuple(v.shape)}"
    assert lk > 0 and 0 < d <= MAX_HEAD_DIM, f"{lk} keys (at least 1), head dim {d} (1..{MAX_HEAD_DIM})"
    assert mask is None or score_program, "a mask is read through the score program"
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    programs = {"q_program": q_program, "k_program": k_program, "v_program": v_program,
                "score_program": score_program, "prob_program": prob_program}
    quantized = out_scale is not None
    cfg = dict(CONFIGS[0] if config is None else config)
    exact = bool(cfg.get("EXACT", 1))
    kernel, consts, fp = _kernel(programs, q, k, v, mask, quantized, exact)
    out = requantized_type(out_zp, out_dtype).torch if quantized else fp
    assert out in (fp, torch.int8, torch.uint8), f"cannot write {out}"
    assert not quantized or out_scale.numel() == 1, "out_scale per tensor"
    # [B, H, Lq, D] stored as [B, Lq, H, D], as kiln::Attention's: the Transpose + Reshape to the
    # output projection's [B, S, H*D] input that follows stays a view (else a copy, ~10 us a layer)
    y = torch.empty((b, lq, heads, d), dtype=out, device=q.device).transpose(1, 2)
    if y.numel() == 0:
        return y
    if mask is not None:   # broadcast to the scores (strides 0 along broadcast dims: no copy)
        assert mask.dim() <= 4, f"a mask of rank {mask.dim()} for [B, H, Lq, Lk] scores"
        m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).expand(b, heads, lq, lk)
        mask_arg, mstr = (m4.view(torch.uint8) if mask.dtype == torch.bool else m4), m4.stride()
    else:
        mask_arg, mstr = q, (0, 0, 0, 0)
    zp = needed_zero_point(out_zp)
    division = _division_dtype(out_scale, precision) if quantized else torch.float32   # QuantizeLinear's
    assert division in PRECISIONS, f"QuantizeLinear dividing in {division}"
    qmin, qmax = OUT_TYPES.get(out) or (0, 0)
    block_n = max(16, triton.next_power_of_2(lk)) if lk <= MAX_KEYS else cfg["BLOCK_N"]
    block_d = max(16, triton.next_power_of_2(d))
    full = lq % cfg["BLOCK_M"] == 0 and lk % block_n == 0 and d == block_d
    grid = (triton.cdiv(lq, cfg["BLOCK_M"]) * b * heads,)
    kernel[grid](
        q, k, v, mask_arg, y, out_scale if quantized else q, reciprocal_of(out_scale, division) if quantized else q,
        q if zp is None else zp, heads, lq, lk, d,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), y.stride(0), y.stride(1), y.stride(2), *mstr, *consts,
        HAS_OZP=zp is not None, PREC=PRECISIONS[division], QMIN=qmin, QMAX=qmax, ONE_TILE=lk <= MAX_KEYS,
        FULL=full, MASK_ROW=mask is not None and mstr[2] == 0, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=cfg["num_warps"], **launch_options(q))
    return y

"""kiln::Attention in Triton: one fused kernel in the manner of FlashAttention-2's forward pass.

The oracle is kiln::Attention (kernels/reference/fused.py):

    Y = softmax(Q @ K^T * scale + mask) @ V       over [..., S, D] (leading dims: batch, heads)

Q [..., Lq, D], K and V [..., Lk, D], one float type (fp16, bf16 or fp32); Y has Q's type. A
program holds BLOCK_M query rows and walks the keys BLOCK_N at a time, keeping for each row
the running maximum m, the running sum l of exp(s - m) and the unnormalised output acc (float32),
rescaled by exp(m_old - m_new) whenever the maximum grows; Y = acc / l at the end. The scores
never reach memory. Scores are scaled by scale * log2(e) so that exp is one exp2 per element
(the mask, in natural units, is scaled by log2(e) too). Both matmuls run on the tensor cores in
the inputs' 16-bit type with float32 accumulation; fp32 inputs use IEEE-exact dots (tf32 would
miss the fp32 tolerance).

Masks as the reference: a boolean mask keeps True positions, a float mask is added; it is read
through broadcast strides (0 along a broadcast dim), so [Lq, Lk], [B, 1, 1, Lk] and full masks
cost no copy. is_causal keeps key j for query i when j <= i (top-left, as torch); keys past
that are not even loaded. A row whose every key is masked has no softmax: the reference gives
NaN there, and so does the kernel (0 / 0). A float mask is clamped at -2e38 before it is
scaled by log2(e), which would take float32's most negative value (HF's padding mask, in an
fp32 engine) to -inf: a row whose every key carries that value gets the reference's uniform
average, not NaN (a -inf mask becomes that finite floor too; its fully masked rows, NaN in the
reference, then average uniformly as well).

With out_scale (and out_zp, out_dtype) Y is requantized in the store, per tensor or per
channel h * D + d of a 4-D Y (the channel of the [B, S, H*D] tensor a transformer makes of it:
SmoothQuant's activation scales), as the GEMM epilogues do (quantize.py's requantize: times the
reciprocal of out_scale, made once per scale tensor on the host by quantize.reciprocal_of as
qgemm.py's launcher makes it, not divided in the kernel; rounded half to even,
saturated; float8 stored as its bits): the QuantizeLinear after attention, folded in
(precision/quantize_attention_output.py), so Y is written once, in 8 bits.

One tile (config ONE_TILE, the tactic kiln::Attention.triton_one_tile): where every key fits one
BLOCK_N of at most MAX_ONE_TILE_KEYS (BERT's 128, ViT's 197), a program takes all keys at once: the
scores once, their maximum and sum at once, one product with V, no running rescale and no key
loop. A mask broadcast over query rows (HF's [B, 1, 1, Lk] padding mask) is read as one row of
keys (MASK_ROW) in both kernels, not once per query row.

8-bit codes (with q_scale, k_scale and v_scale, one element each: an int8 or fp8 engine's attention
whose inputs precision/quantize_attention_inputs.py quantized; float8 e4m3, or int8 with zero point
0) are loaded as 8 bits and widened to float16 in registers (exact) for both products; Q K^T is
then scaled by q_scale * k_scale with the scores' scale, and v_scale multiplies the result with
1 / l. Not one float8 product: Hopper's float8 MMA sums in a narrower accumulator than float32
(compiler/tolerance.py), which on an H200 moved large scores (BERT-base's shape, inputs of 3
sigma) past the float16 tolerance. The scales are read in the kernel (no host sync); a float Y
takes their type.

Q, K and V are read through their strides as [B, H, L, D] (BERT's are transposed views of one
GEMM output: no copies); other ranks are viewed so (leading dims folded). Y of a 4-D Q is
stored [B, S, H, D] in memory, as SDPA's fused kernels store it, so the transformer's
Transpose + Reshape after attention stays a view. D is padded to a power of two (at least 16)
inside the kernel.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from kiln.kernels.reference.quantized import requantized_type
from kiln.kernels.triton.quantize import OUT_TYPES, needed_zero_point, reciprocal_of, requantize
from kiln.kernels.triton.pdl import launch_options, wait_for_inputs

Tensor = torch.Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8 = torch.float8_e4m3fn
CODE_TYPES = (FP8, torch.int8)      # Q, K and V codes with scales (int8: symmetric, zero point 0)
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634
# Float masks are clamped here before the scaling by log2(e): float32's largest magnitude
# (3.4e38, the value HF's exported transformers add at padded keys) times log2(e) is -inf.
MASK_FLOOR: tl.constexpr = tl.constexpr(-2.0e38)

# The tuning space: query rows and keys per step, warps, pipeline depth. Short sequences
# (BERT's 128) want small BLOCK_N and many programs; long ones the wide tiles.
CONFIGS: tuple[dict[str, int], ...] = (
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
)

MAX_ONE_TILE_KEYS = 256
# ONE_TILE: BLOCK_N is the keys' power of two. BERT-base b32 on an H200 (benchmarks/kernels_attention.py,
# 2026-11-29 02:58, fp16, us; the streaming kernel's best 12.9, SDPA 15.1): BLOCK_M 64 / 4 warps 12.0,
# 128 / 8 warps 15.9, 32 / 4 warps 18.3; MiniLM's D 32: 9.8, 13.0, 15.9 (streaming 10.6).
ONE_TILE_CONFIGS: tuple[dict[str, int], ...] = (
    {"ONE_TILE": 1, "BLOCK_M": 64, "num_warps": 4},
    {"ONE_TILE": 1, "BLOCK_M": 128, "num_warps": 8},
    {"ONE_TILE": 1, "BLOCK_M": 32, "num_warps": 4},
)


@triton.jit
def query_block(Lq, H, BLOCK_M: tl.constexpr):
    """(first query row, batch, head) of this program. One flat grid (CUDA's second grid dim stops
    at 65535): program = (batch * H + head) times the query blocks, so one head's query blocks run
    side by side and share its K and V in L2."""
    blocks_m = tl.cdiv(Lq, BLOCK_M)
    pid = tl.program_id(0)
    z = (pid // blocks_m).to(tl.int64)                                  # batch * H + head
    return (pid % blocks_m) * BLOCK_M, z // H, z % H


@triton.jit
def masked_scores(s, MASK, b, h, offs_m, offs_n, m_ok, n_ok, smb, smh, smm, smn,
                  HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr, MASK_ROW: tl.constexpr, CAUSAL: tl.constexpr):
    """Scores (log2 units) [BLOCK_M, BLOCK_N] with keys past Lk, causal cuts and the mask applied:
    -inf where a key is not kept, a float mask added (clamped, then scaled by log2(e))."""
    keep = n_ok[None, :]
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    if HAS_MASK:  # broadcast strides may be 0
        base = MASK + b * smb + h * smh
        if MASK_ROW:  # the same keys for every query row: one row read
            mv = tl.load(base + offs_n * smn, mask=n_ok, other=0)[None, :]
        else:
            mv = tl.load(base + offs_m[:, None].to(tl.int64) * smm + offs_n[None, :] * smn,
                         mask=m_ok[:, None] & n_ok[None, :], other=0)
        if BOOL_MASK:
            keep = keep & (mv != 0)
        else:
            # clamped first: finfo(float32).min (HF's padding mask) times log2(e) overflows
            s = s + tl.maximum(mv.to(tl.float32), MASK_FLOOR) * 1.4426950408889634
    return tl.where(keep, s, -float("inf"))


@triton.jit
def code_scales(qk_scale, QS, KS, VS, CODES: tl.constexpr):
    """(the scores' scale, V's scale): 8-bit codes of Q, K and V scale their products by their
    scales (read here, no host sync), float inputs by 1."""
    v_scale = 1.0
    if CODES:
        qk_scale = qk_scale * tl.load(QS).to(tl.float32) * tl.load(KS).to(tl.float32)
        v_scale = tl.load(VS).to(tl.float32)
    return qk_scale, v_scale


@triton.jit
def store_rows(Y, INV_OS, OZP, y, b, h, offs_m, offs_d, m_ok, d_ok, D, syb, syh, sym,
               OUT_KIND: tl.constexpr, OS_PER_CHANNEL: tl.constexpr, HAS_OZP: tl.constexpr,
               QMIN: tl.constexpr, QMAX: tl.constexpr):
    """Y's rows, requantized first where OUT_KIND says (qgemm.py's epilogue: times 1 / out_scale,
    rounded, saturated), per tensor or per channel h * D + d (the module docstring)."""
    if OUT_KIND != 0:
        zp = 0
        if OS_PER_CHANNEL:
            ch = h * D + offs_d
            inv = tl.load(INV_OS + ch, mask=d_ok, other=1.0)[None, :]
            if HAS_OZP:
                zp = tl.load(OZP + ch, mask=d_ok, other=0)[None, :]
        else:
            inv = tl.load(INV_OS)
            if HAS_OZP:
                zp = tl.load(OZP)
        y = requantize(y * inv, zp, HAS_OZP, OUT_KIND == 2, QMIN, QMAX)
    tl.store(Y + b * syb + h * syh + offs_m[:, None] * sym + offs_d[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _attention_kernel(Q, K, V, MASK, Y, INV_OS, OZP, QS, KS, VS, H, Lq, Lk, D, qk_scale,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, syb, syh, sym, smb, smh, smm, smn,
                      HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr, MASK_ROW: tl.constexpr, CAUSAL: tl.constexpr,
                      IEEE: tl.constexpr, CODES: tl.constexpr, OUT_KIND: tl.constexpr, OS_PER_CHANNEL: tl.constexpr,
                      HAS_OZP: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, ONE_TILE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)   # first: pdl.py's rule
    start_m, b, h = query_block(Lq, H, BLOCK_M)
    offs_m = start_m + tl.arange(0, BLOCK_M)                            # [BLOCK_M]
    offs_d = tl.arange(0, BLOCK_D)                                      # [BLOCK_D]
    m_ok, d_ok = offs_m < Lq, offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)          # [BLOCK_M, BLOCK_D]
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    qk_scale, v_scale = code_scales(qk_scale, QS, KS, VS, CODES)
    if CODES:                                                           # 8-bit codes: exact in float16
        q = q.to(tl.float16)
    if ONE_TILE:  # every key in one BLOCK_N (the module docstring): the softmax of whole rows at once
        acc, l_i = _one_tile(q, k_base, v_base, MASK, b, h, offs_m, offs_d, m_ok, d_ok, Lk, qk_scale,
                             skn, svn, smb, smh, smm, smn, HAS_MASK, BOOL_MASK, MASK_ROW, CAUSAL, IEEE, CODES,
                             BLOCK_N)
    else:
        m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        end_n = Lk
        if CAUSAL:
            end_n = tl.minimum(Lk, start_m + BLOCK_M)                   # keys after the last row's are all cut
        for start_n in range(0, end_n, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)                    # [BLOCK_N]
            n_ok = offs_n < Lk
            k = _rows(k_base, offs_n, offs_d, n_ok, d_ok, skn, CODES)   # [BLOCK_N, BLOCK_D]
            s = masked_scores(_dot(q, tl.trans(k), IEEE) * qk_scale, MASK, b, h, offs_m, offs_n, m_ok, n_ok,
                              smb, smh, smm, smn, HAS_MASK, BOOL_MASK, MASK_ROW, CAUSAL)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == -float("inf"), 0.0, m_new)        # a row with no key yet: exp2(-inf) = 0
            alpha = tl.math.exp2(m_i - m_use)
            p = tl.math.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = _rows(v_base, offs_n, offs_d, n_ok, d_ok, svn, CODES)
            acc = _dot(p, v, IEEE, acc * alpha[:, None])
            m_i = m_new
    store_rows(Y, INV_OS, OZP, acc * (v_scale / l_i)[:, None], b, h, offs_m, offs_d, m_ok, d_ok, D,  # 0/0: NaN
               syb, syh, sym, OUT_KIND, OS_PER_CHANNEL, HAS_OZP, QMIN, QMAX)


@triton.jit
def _one_tile(q, k_base, v_base, MASK, b, h, offs_m, offs_d, m_ok, d_ok, Lk, qk_scale, skn, svn, smb, smh, smm, smn,
              HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr, MASK_ROW: tl.constexpr, CAUSAL: tl.constexpr,
              IEEE: tl.constexpr, CODES: tl.constexpr, BLOCK_N: tl.constexpr):
    """(P V unnormalised, the rows' sums of P) with every key in one BLOCK_N: the scores once,
    their maximum and sum at once, no running rescale."""
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < Lk
    k = _rows(k_base, offs_n, offs_d, n_ok, d_ok, skn, CODES)
    s = masked_scores(_dot(q, tl.trans(k), IEEE) * qk_scale, MASK, b, h, offs_m, offs_n, m_ok, n_ok,
                      smb, smh, smm, smn, HAS_MASK, BOOL_MASK, MASK_ROW, CAUSAL)
    m = tl.max(s, axis=1)
    p = tl.math.exp2(s - tl.where(m == -float("inf"), 0.0, m)[:, None])  # a row with no key: all 0
    v = _rows(v_base, offs_n, offs_d, n_ok, d_ok, svn, CODES)
    return _dot(p, v, IEEE), tl.sum(p, axis=1)


@triton.jit
def _rows(base, offs_n, offs_d, n_ok, d_ok, stride, CODES: tl.constexpr):
    """K's or V's rows offs_n [BLOCK_N, BLOCK_D] (zeros past Lk and D); 8-bit codes widened to
    float16 (exact)."""
    x = tl.load(base + offs_n[:, None] * stride + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if CODES:
        x = x.to(tl.float16)
    return x


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, acc=None):
    """a @ b (+ acc) in float32 on the tensor cores: IEEE float32 for fp32 inputs (TF32 would miss
    the fp32 tolerance), else in b's 16-bit type (a, P in float32, rounded to it first)."""
    if IEEE:
        return tl.dot(a, b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a.to(b.dtype), b, acc)


def _as4(t: Tensor) -> Tensor:
    """[..., L, D] as [B, H, L, D] with a unit last stride: a view for ranks 2 to 4 (any other
    strides: the kernel reads through them, as BERT's Q/K/V are transposed views of one GEMM
    output), leading dims folded for higher ranks (a copy only where they do not fold)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    if t.dim() < 4:
        return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    return t if t.dim() == 4 else t.reshape(-1, t.shape[-3], t.shape[-2], t.shape[-1])


def _output(q: Tensor, dtype: torch.dtype) -> Tensor:
    """Y of Q's shape; for [B, H, S, D] stored as [B, S, H, D] (what SDPA's fused kernels return),
    so that the Transpose(0, 2, 1, 3) + Reshape that follows attention in a transformer is a view."""
    if q.dim() == 4:
        b, h, s, d = q.shape
        return torch.empty((b, s, h, d), dtype=dtype, device=q.device).transpose(1, 2)
    return torch.empty(q.shape, dtype=dtype, device=q.device)


def _requantized_zeros(y: Tensor, out_zp: Tensor | None) -> Tensor:
    """A requantized Y of zeros: the zero point (0 without one; float8 +0)."""
    if out_zp is None:
        return y.view(torch.uint8).zero_().view(y.dtype) if y.dtype == torch.float8_e4m3fn else y.zero_()
    return y.copy_(out_zp.reshape(()).expand(y.shape))


def _mask_view(mask: Tensor, shape4: tuple[int, int, int, int], lead: tuple[int, ...]) -> Tensor:
    """The mask broadcast to Q's [..., Lq, Lk] and viewed as [B, H, Lq, Lk] like _as4 (strides 0
    along broadcast dims: no copy for the usual [Lq, Lk] or [B, 1, 1, Lk] masks)."""
    lq, lk = shape4[2], shape4[3]
    full = mask.expand(*lead, lq, lk)
    if full.dim() < 4:
        return full.reshape((1,) * (4 - full.dim()) + tuple(full.shape))
    return full if full.dim() == 4 else full.reshape(-1, full.shape[-3], lq, lk)


def _float_type(q: Tensor, k: Tensor, v: Tensor, scales: tuple[Tensor | None, ...]) -> torch.dtype:
    """The type a float Y takes: Q's, or for 8-bit codes (with their three scales) the scales'."""
    if q.dtype not in CODE_TYPES:
        assert q.dtype in DTYPES and k.dtype == q.dtype and v.dtype == q.dtype, \
            f"Q, K and V must share a float type of {DTYPES} (or be 8-bit codes), got {q.dtype}, {k.dtype}, {v.dtype}"
        assert all(t is None for t in scales), "q_scale, k_scale and v_scale go with 8-bit codes only"
        return q.dtype
    assert k.dtype == q.dtype and v.dtype == q.dtype, f"{q.dtype} Q takes {q.dtype} K and V, got {k.dtype}, {v.dtype}"
    assert all(t is not None and t.numel() == 1 for t in scales), "8-bit codes take q_scale, k_scale and " \
        "v_scale, one element each"
    assert scales[0].dtype in DTYPES, f"q_scale of {scales[0].dtype}: one of {DTYPES}"
    return scales[0].dtype


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, out_scale: Tensor | None = None,
              out_zp: Tensor | None = None, q_scale: Tensor | None = None, k_scale: Tensor | None = None,
              v_scale: Tensor | None = None, *, scale: float = 0.0, is_causal: int = 0, out_dtype: int = 0,
              config: dict[str, Any] | None = None) -> Tensor:
    """kiln::Attention in one kernel (module docstring); with out_scale, Y requantized; with q_scale,
    k_scale and v_scale, Q, K and V are float8 codes."""
    float_type = _float_type(q, k, v, (q_scale, k_scale, v_scale))
    assert q.dim() >= 2 and k.dim() == q.dim() and v.dim() == q.dim(), "Q, K and V: [..., S, D] of one rank"
    lead, lq, d = tuple(q.shape[:-2]), q.shape[-2], q.shape[-1]
    lk = k.shape[-2]
    assert tuple(k.shape) == (*lead, lk, d) and tuple(v.shape) == (*lead, lk, d), \
        f"K and V must be [..., {lk}, {d}] like Q's leading dims: Q {tuple(q.shape)}, K {tuple(k.shape)}, " \
        f"V {tuple(v.shape)}"
    assert 0 < d <= MAX_HEAD_DIM, f"head dim {d} is outside 1..{MAX_HEAD_DIM}"
    cfg = dict(CONFIGS[0] if config is None else config)
    out = float_type if out_scale is None else requantized_type(out_zp, out_dtype).torch
    assert out in (float_type, *OUT_TYPES), f"cannot requantize attention to {out}"
    channels = q.shape[1] * d if q.dim() == 4 else 1
    assert out_scale is None or (out_scale.numel() in (1, channels) and (out_zp is None or
                                                                        out_zp.numel() == out_scale.numel())), \
        f"out_scale and out_zp: one element each, or H*D = {channels} (per head channel)"
    out_zp = needed_zero_point(out_zp)
    y = _output(q, out)
    if y.numel() == 0:
        return y
    if lk == 0:   # no keys: the reference's softmax is empty and its product with V all zeros
        return y.zero_() if out_scale is None else _requantized_zeros(y, out_zp)
    q4, k4, v4 = _as4(q), _as4(k), _as4(v)
    y4 = y if y.dim() == 4 else y.view(q4.shape)
    heads = q4.shape[1]
    qk_scale = (scale if scale != 0.0 else 1.0 / math.sqrt(d)) * LOG2E
    if mask is not None:
        m4 = _mask_view(mask, tuple(q4.shape[:2]) + (lq, lk), lead)
        mask_arg, mstr = (m4.view(torch.uint8) if mask.dtype == torch.bool else m4), m4.stride()
    else:
        mask_arg, mstr = q4, (0, 0, 0, 0)
    codes = q.dtype in CODE_TYPES
    block_d = max(16, triton.next_power_of_2(d))
    one_tile = bool(cfg.get("ONE_TILE"))
    assert not one_tile or lk <= MAX_ONE_TILE_KEYS, f"ONE_TILE takes up to {MAX_ONE_TILE_KEYS} keys, got {lk}"
    block_n = max(16, triton.next_power_of_2(lk)) if one_tile else cfg["BLOCK_N"]
    grid = (triton.cdiv(lq, cfg["BLOCK_M"]) * q4.shape[0] * heads,)
    kind = 0 if out_scale is None else (2 if out == torch.float8_e4m3fn else 1)
    qmin, qmax = OUT_TYPES.get(out) or (0, 0)                               # float8: its conversion saturates
    y_out = y4.view(torch.uint8) if kind == 2 else y4                     # float8: the kernel stores bits
    _attention_kernel[grid](
        q4, k4, v4, mask_arg, y_out, q4 if out_scale is None else reciprocal_of(out_scale).reshape(-1),
        q4 if out_zp is None else out_zp.reshape(-1), *((q_scale, k_scale, v_scale) if codes else (q4,) * 3),
        heads, lq, lk, d, qk_scale,
        q4.stride(0), q4.stride(1), q4.stride(2), k4.stride(0), k4.stride(1), k4.stride(2),
        v4.stride(0), v4.stride(1), v4.stride(2), y4.stride(0), y4.stride(1), y4.stride(2), *mstr,
        HAS_MASK=mask is not None, BOOL_MASK=mask is not None and mask.dtype == torch.bool,
        MASK_ROW=mask is not None and (mstr[2] == 0 or lq == 1), CAUSAL=bool(is_causal),
        IEEE=q.dtype == torch.float32, CODES=codes, OUT_KIND=kind,
        OS_PER_CHANNEL=out_scale is not None and out_scale.numel() > 1, HAS_OZP=out_zp is not None,
        QMIN=qmin, QMAX=qmax, ONE_TILE=one_tile, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n,
        BLOCK_D=block_d, num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 1), **launch_options(q4))
    return y

"""kiln::Attention: torch's scaled_dot_product_attention, and kiln's own Triton kernel.

SDPA dispatches to the flash, memory-efficient or cuDNN attention kernels on the GPU
(the math path elsewhere): one fused kernel instead of two matmuls, a softmax and the
mask add. Masks keep their meaning: a boolean mask keeps True, a float mask is added.
kiln::Attention.triton (kernels/triton/attention.py) is the same contract in one Triton
kernel with its own tuning space, and kiln::Attention.triton_one_tile its kernel for keys that fit
one tile (up to 256: BERT's, ViT's); the tuner keeps whichever is faster on the node's shapes.
A requantized attention (out_scale: precision/quantize_attention_output.py) is one Triton
kernel, or SDPA followed by QuantizeLinear's kernel (what the engine ran before the fold).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ir import dtypes
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.fused import ATTENTION_CODE_SCALES as CODE_SCALES, ATTENTION_INPUTS
from kiln.kernels.reference.quantized import requantized_type
from kiln.tactics.quantized import device_capability
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

OUT_SCALE, OUT_ZP = ATTENTION_INPUTS.index("out_scale"), ATTENTION_INPUTS.index("out_zp")
FLOATS = ("float32", "float16", "bfloat16")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                   out_scale: torch.Tensor | None = None, out_zp: torch.Tensor | None = None, *,
                   scale: float = 0.0, is_causal: int = 0, out_dtype: int = 0) -> torch.Tensor:
    """Y = softmax(Q @ K^T * scale + mask) @ V over [B, H, S, D] with one SDPA call; with out_scale,
    Y in Q's type is then requantized by QuantizeLinear's Triton kernel (two kernels, where
    kiln::Attention.triton requantizes in its own store)."""
    y = _sdpa(q, k, v, mask, scale, is_causal)
    if out_scale is None:
        return y
    from kiln.kernels.triton.quantize import quantize_linear
    code = out_dtype or requantized_type(out_zp, 0).onnx
    if out_scale.numel() == 1:
        return quantize_linear(y, out_scale, out_zp, output_dtype=code)
    b, h, s, d = y.shape   # per channel h*D + d: of [B, S, H*D], quantized along its last axis
    flat = y.transpose(1, 2).reshape(b, s, h * d)
    return quantize_linear(flat, out_scale.reshape(-1), None if out_zp is None else out_zp.reshape(-1), axis=-1,
                           output_dtype=code).reshape(b, s, h, d).transpose(1, 2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
          is_causal: int) -> torch.Tensor:
    s = scale if scale != 0.0 else 1.0 / math.sqrt(q.shape[-1])
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if mask is not None and mask.dim() < 2:  # SDPA wants a mask with the [L, S] dims present
        mask = mask.expand(q.shape[-2], k.shape[-2]) if mask.dim() == 0 else mask.expand(q.shape[-2], -1)
    if mask is not None and is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, -math.inf)
        is_causal = 0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(is_causal), scale=s)


def _supports(query: TacticQuery) -> bool:
    """Same dtype for q, k, v and a float type SDPA computes in; a requantized output (out_scale)
    needs Triton's QuantizeLinear and scales (per tensor or per head channel) to a type it writes."""
    q, k, v = query.input_dtypes[:3]
    if not (q == k == v and q in FLOATS) or any(i < len(query.input_dtypes) and query.input_dtypes[i] is not None
                                                 for i in CODE_SCALES):
        return False
    return _output_supported(query)


def _output_supported(query: TacticQuery) -> bool:
    return len(query.input_dtypes) <= OUT_SCALE or query.input_dtypes[OUT_SCALE] is None or _requantizable(query)


def _codes(query: TacticQuery) -> bool:
    """Float8 (on a GPU with float8: sm_89 on) or int8 Q, K and V codes with their scales (one
    element each, of a float type): the Triton kernels' (precision/quantize_attention_inputs.py)."""
    dts, shapes = tuple(query.input_dtypes) + (None,) * 9, tuple(query.input_shapes) + (None,) * 9
    if not (dts[0] == dts[1] == dts[2] in ("float8_e4m3fn", "int8")) or any(dts[i] not in FLOATS for i in CODE_SCALES):
        return False
    if any(shapes[i] is None or any(d != 1 for d in shapes[i]) for i in CODE_SCALES):
        return False
    cap = device_capability()
    return (dts[0] == "int8" or cap is not None and cap >= (8, 9)) and _output_supported(query)


def _requantizable(query: TacticQuery) -> bool:
    """out_scale/out_zp of one element (or H*D: per head channel), to int8, uint8 or
    float8_e4m3fn, and Triton present."""
    dts, shapes = tuple(query.input_dtypes) + (None,) * 2, tuple(query.input_shapes) + (None,) * 6
    if not kiln_triton.available() or dts[OUT_SCALE] not in FLOATS:
        return False
    code = int(query.attrs.get("out_dtype", 0) or 0)
    try:
        out = dtypes.from_onnx(code).name if code else (dts[OUT_ZP] or "uint8")
    except TypeError:   # an ONNX type kiln does not know
        return False
    q = shapes[0]
    channels = q[1] * q[3] if q is not None and len(q) == 4 and all(isinstance(x, int) for x in (q[1], q[3])) else 1
    one = all(s is None or all(d == 1 for d in s) or (len(s) == 1 and s[0] == channels)
              for s in shapes[OUT_SCALE:OUT_ZP + 1])
    if out == "float8_e4m3fn":   # the GPU's float8 conversion: sm_89 on
        cap = device_capability()
        if cap is None or cap < (8, 9):
            return False
    return out in ("int8", "uint8", "float8_e4m3fn") and dts[OUT_ZP] in (None, out) and one


register_tactic(Tactic("kiln::Attention.sdpa", "kiln::Attention", 2, ("cuda",), sdpa_attention, _supports))


def _supports_triton(query: TacticQuery) -> bool:
    """Q, K, V of one float type (or 8-bit codes with their scales) and one rank, K and V with Q's
    leading dims (no broadcasting), a known head dim of at most MAX_HEAD_DIM; a boolean or float mask
    of any broadcastable shape."""
    from kiln.kernels.triton.attention import MAX_HEAD_DIM

    if not (_supports(query) or _codes(query)):
        return False
    shapes = tuple(query.input_shapes) + (None,) * (4 - len(query.input_shapes))
    q, k, v, mask = shapes[:4]
    if q is None or k is None or v is None or not (len(q) == len(k) == len(v) >= 2):
        return False
    d = q[-1]
    if not isinstance(d, int) or not 0 < d <= MAX_HEAD_DIM or k[-1] != d or v[-1] != d or k[-2] != v[-2]:
        return False
    if any(a != b for a, b in zip(q[:-2], k[:-2])) or any(a != b for a, b in zip(k[:-2], v[:-2])):
        return False
    mask_dt = query.input_dtypes[3] if len(query.input_dtypes) > 3 else None
    return mask_dt is None or (mask_dt in ("bool", *FLOATS)
                               and (mask is None or len(mask) <= len(q)))


def _supports_one_tile(query: TacticQuery) -> bool:
    """The Triton kernel's rules, and every key in one tile: a key count of at most
    MAX_ONE_TILE_KEYS, known, or symbolic with a largest value (query.dim_max: a dynamic sequence
    within the build's profiles) that is; the launcher sizes the tile to each run's keys."""
    from kiln.kernels.triton.attention import MAX_ONE_TILE_KEYS

    if not _supports_triton(query):
        return False
    lk = query.input_shapes[1][-2]
    lk = query.dim_max.get(lk) if isinstance(lk, str) else lk
    return isinstance(lk, int) and 0 < lk <= MAX_ONE_TILE_KEYS


if kiln_triton.available():
    from kiln.kernels.triton import attention as _triton_attention

    register_tactic(Tactic("kiln::Attention.triton", "kiln::Attention", 2, ("cuda",), _triton_attention.attention,
                           _supports_triton, configs=_triton_attention.CONFIGS))
    register_tactic(Tactic("kiln::Attention.triton_one_tile", "kiln::Attention", 1, ("cuda",),
                           _triton_attention.attention, _supports_one_tile,
                           configs=_triton_attention.ONE_TILE_CONFIGS))

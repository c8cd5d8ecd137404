"""kiln::Attention: torch's scaled_dot_product_attention, and kiln's own Triton kernel.

SDPA dispatches to the flash, memory-efficient or cuDNN attention kernels on the GPU
(the math path elsewhere): one fused kernel instead of two matmuls, a softmax and the
mask add. Masks keep their meaning: a boolean mask keeps True, a float mask is added.
kiln::Attention.triton (kernels/triton/attention.py) is the same contract in one Triton
kernel with its own tuning space; the tuner keeps whichever is faster on the node's shapes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.kernels import triton as kiln_triton
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
                   scale: float = 0.0, is_causal: int = 0) -> torch.Tensor:
    """Y = softmax(Q @ K^T * scale + mask) @ V over [B, H, S, D] with one SDPA call."""
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
    # Same dtype for q, k, v and a float type SDPA computes in.
    q, k, v = query.input_dtypes[:3]
    return q == k == v and q in ("float32", "float16", "bfloat16")


register_tactic(Tactic("kiln::Attention.sdpa", "kiln::Attention", 1, ("cuda",), sdpa_attention, _supports))


def _supports_triton(query: TacticQuery) -> bool:
    """Q, K, V of one float type and one rank, K and V with Q's leading dims (no broadcasting),
    a known head dim of at most MAX_HEAD_DIM; a boolean or float mask of any broadcastable shape."""
    from kiln.kernels.triton.attention import MAX_HEAD_DIM

    if not _supports(query):
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
    return mask_dt is None or (mask_dt in ("bool", "float32", "float16", "bfloat16")
                               and (mask is None or len(mask) <= len(q)))


if kiln_triton.available():
    from kiln.kernels.triton import attention as _triton_attention

    register_tactic(Tactic("kiln::Attention.triton", "kiln::Attention", 1, ("cuda",), _triton_attention.attention,
                           _supports_triton, configs=_triton_attention.CONFIGS))

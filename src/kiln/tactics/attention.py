"""kiln::Attention through torch's scaled_dot_product_attention.

SDPA dispatches to the flash, memory-efficient or cuDNN attention kernels on the GPU
(the math path elsewhere): one fused kernel instead of two matmuls, a softmax and the
mask add. Masks keep their meaning: a boolean mask keeps True, a float mask is added.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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

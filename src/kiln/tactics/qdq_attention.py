"""kiln::QDQAttention: ONNX Runtime's fully quantized attention chain as one Triton kernel
(kernels/triton/qdq_attention.py), beside the reference (the chain's own reference ops, which on
the GPU run as torch's kernels one after another). Every key of a row is in one tile: up to
MAX_KEYS keys and MAX_HEAD_DIM dims per head; a requantized output per tensor, to int8 or uint8."""
from __future__ import annotations

import torch

from kiln.ir import dtypes
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.qdq_attention import QDQ_ATTENTION_INPUTS
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

MASK, OUT_SCALE, OUT_ZP = (QDQ_ATTENTION_INPUTS.index(n) for n in ("mask", "out_scale", "out_zp"))
PROGRAMS = ("q_program", "k_program", "v_program", "score_program", "prob_program")


def _probe(dtype: str | None, shape: tuple | None) -> torch.Tensor | None:
    """A meta tensor standing for an input (symbolic dims as 1): what the generator reads of it."""
    if dtype is None or shape is None:
        return None
    return torch.empty(tuple(d if isinstance(d, int) else 1 for d in shape), dtype=dtypes.from_name(dtype).torch,
                       device="meta")


def _supports_triton(query: TacticQuery) -> bool:
    from kiln.kernels.triton import qdq_attention as qa
    from kiln.kernels.triton.pointwise_ops import Unsupported

    dts = tuple(query.input_dtypes) + (None,) * 6
    shapes = tuple(query.input_shapes) + (None,) * 6
    if dts[0] not in ("int8", "uint8") or any(dts[i] not in ("int8", "uint8") for i in (1, 2)):
        return False
    q, k, v, mask = (_probe(dts[i], shapes[i]) for i in range(4))
    if q is None or k is None or v is None or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    lk, d = shapes[1][2], shapes[0][3]
    if not (isinstance(lk, int) and 0 < lk <= qa.MAX_KEYS and isinstance(d, int) and 0 < d <= qa.MAX_HEAD_DIM):
        return False
    if dts[MASK] is not None and (mask is None or mask.dim() > 4):
        return False
    quantized = dts[OUT_SCALE] is not None
    if quantized:
        shape = shapes[OUT_SCALE]
        code = int(query.attrs.get("out_dtype", 0) or 0)
        out = dtypes.from_onnx(code).name if code else (dts[OUT_ZP] or "uint8")
        if out not in ("int8", "uint8") or shape is None or any(s != 1 for s in shape):
            return False
    try:
        qa.generate({p: query.attrs.get(p) for p in PROGRAMS}, q, k, v, mask, quantized)
    except (Unsupported, KeyError, TypeError, ValueError, RuntimeError):
        return False
    return True


if kiln_triton.available():
    from kiln.kernels.triton import qdq_attention as _qa

    register_tactic(Tactic("kiln::QDQAttention.triton", "kiln::QDQAttention", 1, ("cuda",), _qa.qdq_attention,
                           _supports_triton, configs=_qa.CONFIGS))

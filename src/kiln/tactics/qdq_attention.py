"""kiln::QDQAttention: ONNX Runtime's fully quantized attention chain as one Triton kernel
(kernels/triton/qdq_attention.py), or as the kernels its layers ran before the fold (layered),
beside the reference (the chain's own reference ops, which on the GPU run as torch's kernels one
after another, a program's ops each its own). The one kernel takes up to MAX_HEAD_DIM dims per
head and a requantized output per tensor, to int8 or uint8."""
from __future__ import annotations

import torch

from kiln.ir import dtypes
from kiln.kernels import triton as kiln_triton
from kiln.kernels.reference.qdq_attention import QDQ_ATTENTION_INPUTS, chain
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
    if any(dts[i] not in ("int8", "uint8") for i in range(3)):
        return False
    q, k, v, mask = (_probe(dts[i], shapes[i]) for i in range(4))
    if q is None or k is None or v is None or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    if not (isinstance(shapes[0][3], int) and 0 < shapes[0][3] <= qa.MAX_HEAD_DIM):
        return False
    if dts[MASK] is not None and (mask is None or mask.dim() > 4):
        return False
    quantized = dts[OUT_SCALE] is not None
    if quantized:
        shape = shapes[OUT_SCALE]
        code = int(query.attrs.get("out_dtype", 0) or 0)
        out = dtypes.from_onnx(code).name if code else (dts[OUT_ZP] or "uint8")
        division = int(query.attrs.get("precision", 0) or 0)
        if out not in ("int8", "uint8") or shape is None or any(s != 1 for s in shape) or \
                dts[OUT_SCALE] not in ("float32", "float16", "bfloat16") or \
                (division and dtypes.from_onnx(division).name not in ("float32", "float16", "bfloat16")):
            return False
    try:
        qa.generate({p: query.attrs.get(p) for p in PROGRAMS}, q, k, v, mask, quantized)
    except (Unsupported, KeyError, TypeError, ValueError, RuntimeError):
        return False
    return True


def layered_qdq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                          out_scale: torch.Tensor | None = None, out_zp: torch.Tensor | None = None, *,
                          out_dtype: int = 0, precision: int = 0, **programs: object) -> torch.Tensor:
    """The chain as its layers ran before the fold, one kernel each: the programs as generated
    Pointwise kernels (a DQ of 8-bit codes as a lookup), the products by cuBLAS, torch's softmax
    (the reference's), QuantizeLinear's Triton kernel. Every step gives the reference's values, at
    any number of keys: the floor under the one-kernel tactic."""
    from kiln.kernels.reference.registry import lookup
    from kiln.kernels.triton.pointwise import pointwise
    from kiln.kernels.triton.quantize import quantize_linear

    kernels = {"pointwise": pointwise, "matmul": torch.matmul, "softmax": lookup("Softmax").fn,
               "quantize": quantize_linear}
    return chain(q, k, v, mask, out_scale, out_zp, programs, out_dtype, precision, kernels)


def _supports_layered(query: TacticQuery) -> bool:
    """8-bit Q, K, V; a requantized output per tensor (QuantizeLinear's Triton kernel takes it)."""
    dts = tuple(query.input_dtypes) + (None,) * 6
    if any(dts[i] not in ("int8", "uint8") for i in range(3)):
        return False
    shape = (tuple(query.input_shapes) + (None,) * 6)[OUT_SCALE]
    return dts[OUT_SCALE] is None or (shape is not None and all(s == 1 for s in shape))


if kiln_triton.available():
    from kiln.kernels.triton import qdq_attention as _qa

    register_tactic(Tactic("kiln::QDQAttention.layered", "kiln::QDQAttention", 1, ("cuda",), layered_qdq_attention,
                           _supports_layered))

    register_tactic(Tactic("kiln::QDQAttention.triton", "kiln::QDQAttention", 2, ("cuda",), _qa.qdq_attention,
                           _supports_triton, configs=_qa.CONFIGS))

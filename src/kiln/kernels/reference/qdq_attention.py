"""kiln::QDQAttention: attention with quantize/dequantize pairs inside, as ONNX Runtime writes it.

ONNX Runtime's quantize_static (QDQ format, every op quantized) puts Q/DQ pairs on the scores,
the scaled scores, the masked scores and the probabilities of a transformer's attention, not
only on its inputs and output. The chain then is (precision/fuse_qdq_attention.py):

    qf, kf, vf = q_program(q), k_program(k), v_program(v)      8-bit codes to float (a DQ each)
    scores     = qf @ kf^T                                     MatMul, in the codes' float type
    s          = score_program(scores[, mask])                 Q/DQ, scale, Q/DQ, + mask, Q/DQ
    p          = softmax(s, axis=-1)
    p          = prob_program(p)                               Q/DQ of the probabilities
    y          = p @ vf                                        MatMul
    Y          = QuantizeLinear(y, out_scale, out_zp)          (absent out_scale: Y = y)

q, k and v are [B, H, S, D] (K as keys x dims: the pass composes the Transpose in front of
Q @ K^T into K's view); the programs are kiln::Pointwise programs (fused.py's format), a
missing one is the identity. This reference runs exactly the reference ops of the nodes it
replaced, in their order and types, so the fused layer computes what the unfused ones did.
"""
from __future__ import annotations

from typing import Any

import torch

from kiln.kernels.reference.fused import pointwise
from kiln.kernels.reference.registry import lookup, reference_op

Tensor = torch.Tensor

# kiln::QDQAttention's input positions.
QDQ_ATTENTION_INPUTS = ("q", "k", "v", "mask", "out_scale", "out_zp")


def _apply(program: Any, *inputs: Tensor) -> Tensor:
    return pointwise(*inputs, program=program) if program else inputs[0]


@reference_op("QDQAttention", domain="kiln")
def qdq_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, out_scale: Tensor | None = None,
                  out_zp: Tensor | None = None, *, q_program: Any = None, k_program: Any = None,
                  v_program: Any = None, score_program: Any = None, prob_program: Any = None,
                  out_dtype: int = 0, precision: int = 0) -> Tensor:
    """Y as the module docstring's chain computes it (score_program reads the mask as i1)."""
    matmul = lookup("MatMul").fn
    qf, kf, vf = _apply(q_program, q), _apply(k_program, k), _apply(v_program, v)
    scores = matmul(qf, kf.transpose(-1, -2))
    if score_program:
        scores = pointwise(scores, mask, program=score_program) if mask is not None else \
            pointwise(scores, program=score_program)
    elif mask is not None:
        raise ValueError("kiln::QDQAttention reads a mask only through its score_program (as i1)")
    probs = _apply(prob_program, lookup("Softmax").fn(scores, axis=-1))
    y = matmul(probs, vf)
    if out_scale is None:
        return y
    return lookup("QuantizeLinear").fn(y, out_scale, out_zp, axis=-1, output_dtype=out_dtype, precision=precision)

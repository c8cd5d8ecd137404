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

from typing import Any, Callable

import torch

from kiln.kernels.reference.fused import pointwise
from kiln.kernels.reference.registry import lookup, reference_op

Tensor = torch.Tensor

# kiln::QDQAttention's input positions.
QDQ_ATTENTION_INPUTS = ("q", "k", "v", "mask", "out_scale", "out_zp")


def chain(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out_scale: Tensor | None, out_zp: Tensor | None,
          programs: dict[str, Any], out_dtype: int, precision: int, kernels: dict[str, Callable[..., Tensor]]) -> Tensor:
    """The module docstring's chain with the given kernels: "pointwise" (fused.pointwise's calling
    convention), "matmul", "softmax" (x, axis) and "quantize" (QuantizeLinear's)."""
    def apply(name: str, *inputs: Tensor | None) -> Tensor:
        program = programs.get(name)
        present = [t for t in inputs if t is not None]
        return kernels["pointwise"](*present, program=program) if program else inputs[0]

    if mask is not None and not programs.get("score_program"):
        raise ValueError("kiln::QDQAttention reads a mask only through its score_program (as i1)")
    qf, kf, vf = apply("q_program", q), apply("k_program", k), apply("v_program", v)
    scores = apply("score_program", kernels["matmul"](qf, kf.transpose(-1, -2)), mask)
    probs = apply("prob_program", kernels["softmax"](scores, axis=-1))
    y = kernels["matmul"](probs, vf)
    if out_scale is None:
        return y
    return kernels["quantize"](y, out_scale, out_zp, axis=-1, output_dtype=out_dtype, precision=precision)


@reference_op("QDQAttention", domain="kiln")
def qdq_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, out_scale: Tensor | None = None,
                  out_zp: Tensor | None = None, *, q_program: Any = None, k_program: Any = None,
                  v_program: Any = None, score_program: Any = None, prob_program: Any = None,
                  out_dtype: int = 0, precision: int = 0) -> Tensor:
    """Y as the module docstring's chain computes it (score_program reads the mask as i1)."""
    programs = {"q_program": q_program, "k_program": k_program, "v_program": v_program,
                "score_program": score_program, "prob_program": prob_program}
    kernels = {"pointwise": pointwise, "matmul": lookup("MatMul").fn, "softmax": lookup("Softmax").fn,
               "quantize": lookup("QuantizeLinear").fn}
    return chain(q, k, v, mask, out_scale, out_zp, programs, out_dtype, precision, kernels)

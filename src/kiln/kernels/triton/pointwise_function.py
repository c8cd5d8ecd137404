"""A kiln::Pointwise program as a Triton function of held values, for kernels that apply a program
to values they compute themselves (kernels/triton/qdq_attention.py: the scores and probabilities).

The function is the generated kernel's body (pointwise.instruction: the same rounding, the same
constants as parameters) without its loads and stores: it takes one argument per program input,
held as the Pointwise kernel holds it (16-bit floats in float32, 8-bit codes in int32), then the
program's constants (k0, k1, ...), and returns the program's output held the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kiln.kernels.triton.pointwise import instruction
from kiln.kernels.triton.pointwise_constants import Constants
from kiln.kernels.triton.pointwise_trace import trace


@dataclass(frozen=True, slots=True)
class ProgramFunction:
    source: str                      # "@triton.jit\ndef <name>(x0, ..., k0, ...): ..."
    constants: tuple[float | int, ...]
    out_dtype: torch.dtype


def program_function(name: str, program: Sequence[Any], in_dtypes: Sequence[torch.dtype],
                     shapes: Sequence[Sequence[int]], exact: bool = True) -> ProgramFunction:
    """`program` over inputs of these dtypes (and shapes: their ranks type the math, as in a
    Pointwise kernel) as the source of one @triton.jit function `name`. `exact` False: Q/DQ the
    quick way (pointwise_ops.EmitContext.exact; a QuantizeLinear's codes held as float32
    integers). Raises pointwise_ops.Unsupported where the generator cannot write it."""
    tr = trace(program, list(in_dtypes), [tuple(s) for s in shapes], None, 1)
    held = {("i", i): d for i, d in enumerate(in_dtypes)}
    consts = Constants()
    per_op = any(s.op == "QuantizeLinear" for s in tr.steps)
    body = [instruction(k, s, held, consts, per_op, exact) for k, s in enumerate(tr.steps)]
    kind, index = tr.outputs[0]
    params = [f"x{i}" for i in range(len(in_dtypes))] + consts.names
    lines = ["@triton.jit", f"def {name}({', '.join(params)}):", *[f"    {line}" for line in body],
             f"    return {'x' if kind == 'i' else 't'}{index}", ""]
    return ProgramFunction("\n".join(lines), tuple(consts.values), tr.out_dtypes[0])

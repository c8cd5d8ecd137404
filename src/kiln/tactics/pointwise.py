"""Tactics for kiln::Pointwise: one generated Triton kernel per fused element-wise program.

The code generator (kiln.kernels.triton.pointwise) writes the program as one kernel: each
input loaded once, one expression per instruction, one store per output, float math in
float32. `supports` asks the generator itself whether it can write the program for these
dtypes (and shapes, where known), so the ops and dtypes it takes are stated in one place
(pointwise_ops.RULES). Registered only where Triton imports; CUDA only (the interpreter
is for tests, which call the kernel directly).
"""
from __future__ import annotations

from kiln.kernels import triton as kiln_triton
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic


def _supports(query: TacticQuery) -> bool:
    from kiln.kernels.triton.pointwise import supports_program

    if query.device != "cuda" or "program" not in query.attrs:
        return False
    return supports_program(query.attrs["program"], query.input_dtypes, query.input_shapes,
                            query.attrs.get("outputs"), int(query.attrs.get("n_outputs", 1)))


def _register() -> None:
    from kiln.kernels.triton import pointwise

    register_tactic(Tactic("kiln::Pointwise.triton", "kiln::Pointwise", 1, ("cuda",), pointwise.pointwise,
                           _supports, configs=pointwise.CONFIGS))


if kiln_triton.available():
    _register()

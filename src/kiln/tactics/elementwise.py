"""Tactics for a lone element-wise op (Mul, Div, Clip, Cast, ...): kiln::Pointwise's generated
Triton kernel, run on a program of that one op.

fuse_pointwise leaves a group of one op as it is (a one-op program is no fusion), and those ops
then ran their reference kernels on the GPU: torch ops that widen a 16-bit operand to float32
first and round back after, two or three kernels for one op (MiniLM's pooling tail: a Mul, a
Clip, a Div, two Casts, 5 us each at batch 32). Here the op becomes the program
[[op, [i0, i1, ...], attrs]] (an absent optional input, Clip's max say, stays None in it) and
runs as one kernel, the arithmetic the program's (the pointwise generator's rules,
pointwise_ops.RULES: float math in float32, one rounding to the output type). `supports` asks
the generator whether it writes that program for the node's dtypes and shapes. Device steps
only: shape arithmetic on host values keeps the reference (lower.py). Registered only where
Triton imports; CUDA only.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from kiln.kernels import triton as kiln_triton
from kiln.tactics.registry import Tactic, TacticQuery, register_tactic

Program = list[list[Any]]
# Ops the generator takes that have Triton tactics of their own (and names taken): not registered here.
OWN_TACTICS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def one_op_program(op: str, present: list[bool], attrs: dict[str, Any]) -> Program:
    """[[op, args, attrs]]: args i0, i1, ... for the inputs given, None for the absent ones."""
    args, k = [], 0
    for given in present:
        args.append(f"i{k}" if given else None)
        k += given
    return [[op, args, dict(attrs)]]


def _kernel(op: str) -> Callable[..., Any]:
    from kiln.kernels.triton.pointwise import pointwise

    def run(*inputs: Any, config: dict[str, int] | None = None, **attrs: Any) -> Any:
        program = one_op_program(op, [t is not None for t in inputs], attrs)
        return pointwise(*[t for t in inputs if t is not None], program=program, config=config)
    run.__name__ = f"{op}_triton"
    return run


def _supports(query: TacticQuery) -> bool:
    from kiln.kernels.triton.pointwise import supports_program

    if query.device != "cuda" or query.n_outputs != 1:
        return False
    try:
        json.dumps(query.attrs)   # a program is JSON data
    except TypeError:
        return False
    present = [d is not None for d in query.input_dtypes]
    shapes = tuple(query.input_shapes) + (None,) * (len(present) - len(query.input_shapes))
    return any(present) and supports_program(one_op_program(query.op, present, query.attrs),
                                             [d for d in query.input_dtypes if d is not None],
                                             [s for s, given in zip(shapes, present) if given])


def _register() -> None:
    from kiln.kernels.triton.pointwise import CONFIGS
    from kiln.kernels.triton.pointwise_ops import RULES

    for op in sorted(set(RULES) - OWN_TACTICS):
        register_tactic(Tactic(f"{op}.triton", op, 1, ("cuda",), _kernel(op), _supports, configs=CONFIGS))


if kiln_triton.available():
    _register()

"""Trace a kiln::Pointwise program: every value's dtype and shape, as the reference computes them.

The generator needs the dtype of each operand and result to type the kernel's math exactly
like the reference op (torch's type promotion, including its rank-0 rules) and the shapes to
plan the iteration space. Both come from here, without touching real data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kiln.ir.dtypes import from_name
from kiln.kernels.reference.registry import lookup
from kiln.kernels.triton.pointwise_ops import RULES, Unsupported

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True)
class Step:
    """One traced instruction: args are ("i", n) | ("t", k) | ("c", value, dtype) | None."""
    op: str
    args: tuple[Any, ...]
    attrs: dict[str, Any]
    arg_dtypes: tuple[torch.dtype | None, ...]
    dtype: torch.dtype           # the result's
    common: torch.dtype          # the operands' promoted dtype


@dataclass(frozen=True, slots=True)
class Trace:
    steps: tuple[Step, ...]
    outputs: tuple[tuple[str, int], ...]     # ("t", k) or ("i", n)
    out_dtypes: tuple[torch.dtype, ...]
    out_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]                   # the iteration space: all inputs broadcast


def _parse(arg: Any) -> Any:
    if arg is None:
        return None
    if isinstance(arg, dict):
        return ("c", arg["const"], from_name(arg["dtype"]).torch)
    if isinstance(arg, str) and arg[:1] in ("i", "t") and arg[1:].isdigit():
        return (arg[0], int(arg[1:]))
    raise Unsupported(f"Pointwise argument {arg!r}")


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy broadcasting of shapes (torch.broadcast_shapes imports torch.fx on first use: seconds)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for d, n in enumerate(s, rank - len(s)):
            if n != out[d] and 1 not in (n, out[d]):
                raise ValueError(f"shapes {list(shapes)} do not broadcast")
            out[d] = n if out[d] == 1 else out[d]
    return tuple(out)


def trace(program: Sequence[Any], dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]],
          outputs: Sequence[str] | None = None, n_outputs: int = 1) -> Trace:
    """Dtypes and shapes of every value, as the reference op computes them.

    Dtypes come from running the reference ops on one-element CPU probes of each value's rank
    (rank, not size, is what torch's type promotion reads; meta tensors would do too, but their
    first use costs seconds of imports). Shapes broadcast, as in every element-wise op.
    """
    probes = [torch.zeros((1,) * len(s), dtype=d) for d, s in zip(dtypes, shapes)]
    sizes = [tuple(s) for s in shapes]
    temps: list[Tensor] = []
    temp_sizes: list[tuple[int, ...]] = []
    steps: list[Step] = []

    def probe(a: Any) -> tuple[Tensor, tuple[int, ...]] | None:
        if a is None:
            return None
        if a[0] == "c":
            return torch.tensor(a[1], dtype=a[2]), ()
        pool, pool_sizes = (probes, sizes) if a[0] == "i" else (temps, temp_sizes)
        if a[1] >= len(pool):
            raise Unsupported(f"Pointwise argument {a} names no value")
        return pool[a[1]], pool_sizes[a[1]]

    for op_type, raw_args, attrs in program:
        opdef = lookup(op_type)
        if op_type not in RULES or opdef is None:
            raise Unsupported(f"op {op_type}")
        args = tuple(_parse(a) for a in raw_args)
        found = [probe(a) for a in args]
        values = [None if f is None else f[0] for f in found]
        while values and values[-1] is None:
            values.pop()
        present = [f for f in found if f is not None]
        if not present:
            raise Unsupported(f"{op_type} without operands")
        try:
            out = opdef.fn(*values, **attrs)
            # CastLike's second operand gives a dtype only; all others broadcast.
            shape = present[0][1] if op_type == "CastLike" else broadcast(*[f[1] for f in present])
        except Exception as e:  # the reference rejects it (dtype, attribute, shapes): so do we
            raise Unsupported(f"{op_type}: {e}") from None
        out = out[0] if isinstance(out, tuple) else out
        # Comparisons compute in their two operands' promoted dtype (rank-0 rules included).
        common = torch.result_type(present[0][0], present[1][0]) if len(present) == 2 else present[0][0].dtype
        arg_dtypes = tuple(None if f is None else f[0].dtype for f in found)
        steps.append(Step(op_type, args, dict(attrs), arg_dtypes, out.dtype, common))
        temps.append(out)
        temp_sizes.append(tuple(shape))
    refs = [_parse(r) for r in (list(outputs) if outputs else [f"t{len(temps) - 1}"])]
    if len(refs) != n_outputs or any(r is None or r[0] == "c" for r in refs):
        raise Unsupported(f"outputs {outputs} with n_outputs={n_outputs}")
    outs = [probe(r) for r in refs]
    try:
        space = broadcast(*sizes) if sizes else ()
    except ValueError as e:
        raise Unsupported(str(e)) from None
    return Trace(tuple(steps), tuple(refs), tuple(o[0].dtype for o in outs), tuple(o[1] for o in outs), space)

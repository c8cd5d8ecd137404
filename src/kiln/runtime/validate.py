"""Input checks against an engine's bindings and shape profiles, with errors that say the fix."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from kiln.engine.plan import Binding
from kiln.errors import InputError
from kiln.ir import dtypes


def _fmt(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def validate_inputs(bindings: Sequence[Binding], given: Mapping[str, torch.Tensor],
                    profiles: Sequence[Mapping[str, Mapping[str, list[int]]]]) -> None:
    names = [b.name for b in bindings]
    unknown = [n for n in given if n not in names]
    if unknown:
        raise InputError(f"the engine has no input named {unknown[0]!r}; its inputs are {', '.join(names)}. "
                         "Pass each input by its binding name (`kiln inspect ENGINE` lists them).")
    missing = [n for n in names if n not in given]
    if missing:
        raise InputError(f"input {missing[0]!r} is missing; the engine needs {', '.join(names)}.")
    for b in bindings:
        t = given[b.name]
        if b.kind != "tensor" or not isinstance(t, torch.Tensor):
            _check_container(b, t)
            continue
        got = dtypes.from_torch(t.dtype).name
        if t.dtype != dtypes.from_name(b.dtype).torch:  # int4 travels as int8, float4 as float32 ...
            raise InputError(f"input {b.name!r} has dtype {got} but the engine expects {b.dtype}; "
                             f"convert it first (numpy: x.astype('{b.dtype}')).")
        if len(t.shape) != len(b.shape):
            raise InputError(f"input {b.name!r} has shape {_fmt(t.shape)} (rank {len(t.shape)}) but the engine "
                             f"expects rank {len(b.shape)}: {_fmt(b.shape)}.")
        for i, d in enumerate(b.shape):
            if isinstance(d, int) and t.shape[i] != d:
                raise InputError(f"input {b.name!r} has shape {_fmt(t.shape)} but dim {i} must be {d} "
                                 f"(engine shape {_fmt(b.shape)}).")
    if profiles:
        _check_profiles(bindings, given, profiles)


def _check_container(b: Binding, value: Any) -> None:
    ok = {"tensor": (torch.Tensor,), "sequence": (list, tuple),
          "optional": (torch.Tensor, list, tuple, type(None))}[b.kind]
    if not isinstance(value, ok):
        want = {"tensor": "a tensor", "sequence": "a list of tensors",
                "optional": "a tensor, a list of tensors or None"}[b.kind]
        raise InputError(f"input {b.name!r} is a {type(value).__name__} but the engine expects {want}.")


def _check_profiles(bindings: Sequence[Binding], given: Mapping[str, torch.Tensor],
                    profiles: Sequence[Mapping[str, Mapping[str, list[int]]]]) -> None:
    problems = []
    for p in profiles:
        bad = []
        for b in bindings:
            r = p.get(b.name)
            if r is None:
                continue
            dims = list(given[b.name].shape)
            if not all(lo <= d <= hi for lo, d, hi in zip(r["min"], dims, r["max"])):
                bad.append(f"input {b.name!r} has shape {_fmt(dims)}, outside the profile's "
                           f"min {_fmt(r['min'])} .. max {_fmt(r['max'])}")
        if not bad:
            return
        problems.append(bad[0])
    raise InputError(f"{problems[0]}. Pass a shape within the range, or rebuild the engine with a wider "
                     "range (`kiln build ... --min/--opt/--max`).")

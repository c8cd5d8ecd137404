"""Parsing trtexec-style shape lists: `name:8x3x224x224,mask:8x128`."""
from __future__ import annotations

import click


def parse_shapes(text: str | None, option: str = "--shapes") -> dict[str, list[int]]:
    """`name:AxBxC[,name2:...]` -> {name: [A, B, C]}; an empty text gives {}.

    The name is split at the *last* colon, because TensorFlow-exported models name
    inputs like `input:0`; a rank-0 input is written `name:` (no dims).
    """
    if not text:
        return {}
    out: dict[str, list[int]] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME:DIMS; write e.g. `{option} input:8x3x224x224`.",
                                     param_hint=option)
        try:
            values = [int(d) for d in dims.lower().split("x")] if dims.strip() else []
        except ValueError:
            raise click.BadParameter(f"the dims {dims!r} of input {name!r} are not integers joined by 'x'; "
                                     f"write e.g. `{option} {name}:8x3x224x224`.", param_hint=option) from None
        if any(v < 0 for v in values):
            raise click.BadParameter(f"input {name!r} has a negative dim in {dims!r}.", param_hint=option)
        if name in out:
            raise click.BadParameter(f"input {name!r} is given twice.", param_hint=option)
        out[name] = values
    return out

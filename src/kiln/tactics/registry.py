"""The tactic table.

A Tactic is one implementation of one op: a kernel function with the reference calling
convention (`fn(*inputs, **attrs)`), the devices and dtypes it supports, and a version.
Its id (`Conv.reference`, later `Conv.cudnn`, `kiln::FusedMatMul.triton`) is stored in
engine files, so ids are API: a changed kernel gets a new version, never a reused id.
Every op has at least its reference tactic; faster ones register beside it and the
tuner picks among the candidates whose `supports` accepts the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kiln.errors import EngineFormatError
from kiln.kernels.reference import supported_ops


@dataclass(frozen=True, slots=True)
class TacticQuery:
    """What a tactic needs to know about a node to say whether it can run it."""
    op: str
    device: str                              # "cpu" | "cuda"
    input_dtypes: tuple[str | None, ...]
    attrs: dict[str, Any]
    # Dims per input (None: unknown rank; str dims are symbolic). The tuner asks again with
    # the concrete shapes of the profile's opt point.
    input_shapes: tuple[tuple[int | str, ...] | None, ...] = ()
    layout: str = "nchw"                     # the graph's layout decision (passes/choose_layout.py)
    n_outputs: int = 1                       # outputs the node uses (e.g. MaxPool without Indices)
    # The largest value of each symbolic dim over the build's profiles (Graph.dim_bounds): a
    # tactic whose limit is an upper bound (the one-tile attention's key count) may read it.
    dim_max: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tactic:
    name: str
    op: str
    version: int
    devices: tuple[str, ...]
    kernel: Callable[..., Any]
    supports: Callable[[TacticQuery], bool]
    placement: str = "device"                # "host": outputs are host tensors (shape arithmetic)
    # The tuning space, a literal list: the tuner times each config; the kernel receives the
    # chosen one as the keyword `config`. One empty config means "nothing to tune" (and no keyword).
    configs: tuple[dict[str, Any], ...] = ({},)


TACTICS: dict[str, Tactic] = {}


def register_tactic(tactic: Tactic) -> Tactic:
    if tactic.name in TACTICS:
        raise ValueError(f"tactic {tactic.name} registered twice")
    TACTICS[tactic.name] = tactic
    return tactic


def _always(_: TacticQuery) -> bool:
    return True


def _ensure_loaded() -> None:
    from kiln.tactics import (attention, conv, conv_triton, dynamic_quantize, elementwise, gather, host,  # noqa: F401
                              matmul, matmul_quantize, norm, pointwise, pool, qdq_attention, quantized,
                              quantized_conv, quantized_conv_gluon, quantized_fallback, reduce)  # (they register)

    for op, opdef in supported_ops().items():
        name = f"{op}.reference"
        if name not in TACTICS:
            TACTICS[name] = Tactic(name, op, 1, ("cpu", "cuda"), opdef.fn, _always)


def candidates(query: TacticQuery) -> list[Tactic]:
    """The tactics that can run `query`, fastest-first by their registration order."""
    _ensure_loaded()
    found = [t for t in TACTICS.values() if t.op == query.op and query.device in t.devices and t.supports(query)]
    return sorted(found, key=lambda t: t.name.endswith(".reference"))


def get_tactic(name: str) -> Tactic:
    _ensure_loaded()
    try:
        return TACTICS[name]
    except KeyError:
        raise EngineFormatError(f"the engine uses tactic {name!r}, which this version of kiln does not have; "
                                "rebuild the engine with this kiln (`kiln rebuild ENGINE`).") from None

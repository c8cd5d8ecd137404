"""What the precision policy decided: the layers that compute in a type other than the engine's.

Recorded in the engine header (build.precision) so `kiln inspect` can say which layers were
kept wider (or narrower) and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LayerPrecision:
    """One layer (IR node, later the engine step of the same name) and the type it computes in."""
    layer: str
    op: str
    precision: str  # "fp32" | "fp16" | "bf16"
    reason: str     # the user's rule ("layer precision rule enc/*=fp32") or the safety table's reason
    fused_from: tuple[str, ...] = ()  # the source nodes of a fused layer

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "op": self.op, "precision": self.precision, "reason": self.reason,
                "fused_from": list(self.fused_from)}


@dataclass(frozen=True, slots=True)
class PrecisionReport:
    """The outcome of apply_precision: the engine precision and every per-layer exception to it."""
    precision: str
    strongly_typed: bool
    changed: bool  # whether the graph was rewritten
    layers: tuple[LayerPrecision, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.precision, "strongly_typed": self.strongly_typed,
                "layers": [d.to_json() for d in self.layers]}

"""Precision: the compute types of the graph (fp32/tf32/fp16/bf16 and per-layer exceptions)."""
from kiln.precision.decision import LayerPrecision, PrecisionReport
from kiln.precision.policy import apply_precision

__all__ = ["LayerPrecision", "PrecisionReport", "apply_precision"]

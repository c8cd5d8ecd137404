"""Precision: the compute types of the graph (fp32/fp16/bf16 now; int8/fp8 later)."""
from kiln.precision.policy import apply_precision

__all__ = ["apply_precision"]

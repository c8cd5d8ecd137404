"""Accuracy: compare a kiln engine's outputs with a reference (onnxruntime or a kiln fp32 engine)."""
from __future__ import annotations

from kiln.accuracy.compare import CompareReport, compare
from kiln.accuracy.metrics import OutputMetrics, default_tolerances, output_metrics

__all__ = ["CompareReport", "OutputMetrics", "compare", "default_tolerances", "output_metrics"]

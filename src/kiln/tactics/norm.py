"""Tactics for normalization and softmax: Triton LayerNorm / RMSNorm / Softmax kernels."""
from __future__ import annotations

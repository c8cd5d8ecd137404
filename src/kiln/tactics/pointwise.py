"""Tactics for kiln::Pointwise: one generated Triton kernel per fused element-wise program."""
from __future__ import annotations

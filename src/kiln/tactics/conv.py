"""Tactics for Conv / kiln::FusedConv: cuDNN in channels-last layout, and Triton implicit-GEMM convolution."""
from __future__ import annotations

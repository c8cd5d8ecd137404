"""Tactics for MatMul / Gemm / kiln::FusedMatMul: cuBLAS(Lt) through torch with fused epilogues, and a Triton GEMM with fused epilogues."""
from __future__ import annotations

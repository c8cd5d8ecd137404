"""Kernels: the reference implementation of every op (the oracle) and, later, Triton kernels."""

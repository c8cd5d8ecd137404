"""Random number ops (RandomUniform/Normal and their Like forms, Bernoulli, Multinomial), seeded per the spec.

With a `seed` attribute the draws come from a fresh torch generator seeded from it, so the
same node gives the same values on every run (on one device; CPU and CUDA generators
differ). Without one they come from torch's global generator. No op can reproduce
numpy's streams, which the ONNX reference uses: only distributions and determinism match.
"""
from __future__ import annotations

import struct
from typing import Sequence

import torch

from kiln.ir.dtypes import onnx_to_torch
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _generator(seed: float | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded from the float `seed` (whole seeds as themselves, others by bit pattern), or None."""
    if seed is None:
        return None
    seed = float(seed)
    if seed.is_integer() and 0 <= seed < 2**63:
        bits = int(seed)
    else:  # fold the high half in: torch's CPU generator keeps only the low 32 bits
        bits = struct.unpack("<Q", struct.pack("<d", seed))[0]
        bits ^= bits >> 32
    return torch.Generator(device=device).manual_seed(bits & (2**63 - 1))


def _float_dtype(dtype: int | None, like: Tensor | None) -> torch.dtype:
    """The output dtype: the `dtype` attribute, else the input's (Like forms)."""
    out = onnx_to_torch(dtype) if dtype is not None else like.dtype if like is not None else torch.float32
    if not out.is_floating_point:
        raise ValueError(f"random ops produce float tensors; dtype {out} is not one")
    return out


def _uniform(shape: Sequence[int], dtype: torch.dtype, low: float, high: float, seed: float | None,
             device: torch.device) -> Tensor:
    # Drawn in float32 at least (torch has no half generators on every device), then cast.
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.rand(list(shape), dtype=acc, device=device, generator=_generator(seed, device))
    return (u * (high - low) + low).to(dtype)


def _normal(shape: Sequence[int], dtype: torch.dtype, mean: float, scale: float, seed: float | None,
            device: torch.device) -> Tensor:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    z = torch.randn(list(shape), dtype=acc, device=device, generator=_generator(seed, device))
    return (z * scale + mean).to(dtype)


@reference_op("RandomUniform")
def random_uniform(*, shape: Sequence[int], dtype: int = 1, high: float = 1.0, low: float = 0.0,
                   seed: float | None = None) -> Tensor:
    """Output [shape] drawn uniformly from [low, high). Made on the CPU: it has no input to follow."""
    return _uniform(shape, _float_dtype(dtype, None), low, high, seed, torch.device("cpu"))


@reference_op("RandomUniformLike")
def random_uniform_like(x: Tensor, *, dtype: int | None = None, high: float = 1.0, low: float = 0.0,
                        seed: float | None = None) -> Tensor:
    """Output shaped like Input, drawn uniformly from [low, high); dtype defaults to Input's."""
    return _uniform(x.shape, _float_dtype(dtype, x), low, high, seed, x.device)


@reference_op("RandomNormal")
def random_normal(*, shape: Sequence[int], dtype: int = 1, mean: float = 0.0, scale: float = 1.0,
                  seed: float | None = None) -> Tensor:
    """Output [shape] drawn from N(mean, scale**2). Made on the CPU: it has no input to follow."""
    return _normal(shape, _float_dtype(dtype, None), mean, scale, seed, torch.device("cpu"))


@reference_op("RandomNormalLike")
def random_normal_like(x: Tensor, *, dtype: int | None = None, mean: float = 0.0, scale: float = 1.0,
                       seed: float | None = None) -> Tensor:
    """Output shaped like Input, drawn from N(mean, scale**2); dtype defaults to Input's."""
    return _normal(x.shape, _float_dtype(dtype, x), mean, scale, seed, x.device)


@reference_op("Bernoulli")
def bernoulli(x: Tensor, *, dtype: int | None = None, seed: float | None = None) -> Tensor:
    """Output = 1 with probability Input, else 0, per element; dtype defaults to Input's."""
    out = onnx_to_torch(dtype) if dtype is not None else x.dtype
    p = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    u = torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=_generator(seed, p.device))
    return (u < p).to(out)


@reference_op("Multinomial")
def multinomial(x: Tensor, *, dtype: int = 6, sample_size: int = 1, seed: float | None = None) -> Tensor:
    """Output [batch, sample_size] = class indices drawn from softmax(Input [batch, class])."""
    out = onnx_to_torch(dtype)
    if out not in (torch.int32, torch.int64):
        raise ValueError(f"Multinomial dtype must be int32 or int64, got {out}")
    # Input holds unnormalized log-probabilities; softmax in float32 at least keeps tiny ones.
    probs = torch.softmax(x.to(torch.float64 if x.dtype == torch.float64 else torch.float32), dim=-1)
    idx = torch.multinomial(probs, sample_size, replacement=True, generator=_generator(seed, x.device))
    return idx.to(out)

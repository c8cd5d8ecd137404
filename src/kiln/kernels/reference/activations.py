"""Activation functions and Clip/Shrink: element-wise, float in and out.

Each formula is written as the ONNX spec states it rather than through a fused torch
helper where the two round differently (e.g. HardSwish), because this is the oracle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.kernels.reference.common import from_unsigned_ordered, unsigned_ordered
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


@reference_op("Relu")
def relu(x: Tensor) -> Tensor:
    """Y = max(0, X)."""
    return torch.clamp_min(x, 0)


@reference_op("LeakyRelu")
def leaky_relu(x: Tensor, *, alpha: float = 0.01) -> Tensor:
    """Y = X if X >= 0 else alpha * X."""
    return torch.where(x >= 0, x, x * alpha)


@reference_op("PRelu")
def prelu(x: Tensor, slope: Tensor) -> Tensor:
    """Y = X if X >= 0 else slope * X, slope broadcast to X."""
    return torch.where(x >= 0, x, x * slope)


@reference_op("ThresholdedRelu")
def thresholded_relu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Y = X if X > alpha else 0."""
    return torch.where(x > alpha, x, torch.zeros_like(x))


@reference_op("Elu")
def elu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Y = X if X > 0 else alpha * (exp(X) - 1)."""
    return torch.where(x > 0, x, alpha * torch.expm1(x))


@reference_op("Selu")
def selu(x: Tensor, *, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> Tensor:
    """Y = gamma * (X if X > 0 else alpha * (exp(X) - 1))."""
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@reference_op("Celu")
def celu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Y = max(0, X) + min(0, alpha * (exp(X / alpha) - 1))."""
    return torch.clamp_min(x, 0) + torch.clamp_max(alpha * torch.expm1(x / alpha), 0)


@reference_op("Sigmoid")
def sigmoid(x: Tensor) -> Tensor:
    """Y = 1 / (1 + exp(-X))."""
    return torch.sigmoid(x)


@reference_op("HardSigmoid")
def hard_sigmoid(x: Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> Tensor:
    """Y = max(0, min(1, alpha * X + beta))."""
    return torch.clamp(alpha * x + beta, 0, 1)


@reference_op("HardSwish")
def hard_swish(x: Tensor) -> Tensor:
    """Y = X * max(0, min(1, X / 6 + 0.5))."""
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0, 1)


@reference_op("Softplus")
def softplus(x: Tensor) -> Tensor:
    """Y = ln(exp(X) + 1), computed without overflow."""
    return torch.logaddexp(x, torch.zeros_like(x))


@reference_op("Softsign")
def softsign(x: Tensor) -> Tensor:
    """Y = X / (1 + |X|)."""
    return x / (1 + torch.abs(x))


@reference_op("Tanh")
def tanh(x: Tensor) -> Tensor:
    """Y = tanh(X)."""
    return torch.tanh(x)


@reference_op("Gelu")
def gelu(x: Tensor, *, approximate: str = "none") -> Tensor:
    """Y = X * Phi(X) exactly (approximate="none") or by the tanh formula ("tanh")."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x, approximate=approximate)


@reference_op("Mish")
def mish(x: Tensor) -> Tensor:
    """Y = X * tanh(softplus(X))."""
    return x * torch.tanh(softplus(x))


@reference_op("Clip")
def clip(x: Tensor, min: Tensor | None = None, max: Tensor | None = None) -> Tensor:  # noqa: A002
    """Y = X limited to [min, max]; either bound may be omitted; min > max gives max."""
    # Tensors as bounds keep the values on the device (no host read). uint16/32/64,
    # which torch cannot compare, are clipped through order-preserving int64 keys.
    y = unsigned_ordered(x)
    if min is not None:
        y = torch.maximum(y, unsigned_ordered(min.to(x.dtype)))
    if max is not None:
        y = torch.minimum(y, unsigned_ordered(max.to(x.dtype)))
    return from_unsigned_ordered(y, x.dtype)


@reference_op("Shrink")
def shrink(x: Tensor, *, bias: float = 0.0, lambd: float = 0.5) -> Tensor:
    """Y = X + bias if X < -lambd, X - bias if X > lambd, else 0."""
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)).to(x.dtype)


@reference_op("Swish")
def swish(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Y = X * sigmoid(alpha * X)."""
    return x * torch.sigmoid(alpha * x)


@reference_op("SwiGLU")
def swiglu(a: Tensor, b: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Y = Swish_alpha(A) * B = A * sigmoid(alpha * A) * B (A and B of one shape)."""
    return swish(a, alpha=alpha) * b

"""Training-style losses that deployed graphs contain: SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss.

Both share one core: the loss of element (n, d1, ...) is -W[t] * X[n, t, d1, ...] with
t = Target[n, d1, ...], zero where t == ignore_index. "mean" divides the sum by the sum
of the weights used (the count of non-ignored elements when there are no weights).
"""
from __future__ import annotations

import torch

from kiln.kernels.reference.common import compute_dtype
from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor

_REDUCTIONS = ("none", "sum", "mean")


def _nll(x: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
         ignore_index: int | None) -> Tensor:
    """Negative log likelihood of log-probabilities `x` [N, C, *D] at `target` [N, *D], in x's dtype."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if x.dim() < 2:
        raise ValueError(f"loss input must have shape [N, C, ...], got {tuple(x.shape)}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = target.to(torch.int64)
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    # Ignored targets may be out of range (e.g. -1 or C): clamp them for the gathers, they are masked out.
    safe = t.clamp(0, x.shape[1] - 1)
    picked = torch.gather(x.to(acc), 1, safe.unsqueeze(1)).squeeze(1)
    w = keep.to(acc) if weight is None else weight.to(acc)[safe] * keep
    loss = -picked * w
    if reduction == "none":
        return loss.to(x.dtype)
    total = loss.to(torch.float64).sum()
    if reduction == "sum":
        return total.to(x.dtype)
    return (total / w.to(torch.float64).sum()).to(x.dtype)


@reference_op("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(x: Tensor, target: Tensor, weight: Tensor | None = None, *,
                                 ignore_index: int | None = None, reduction: str = "mean") -> Tensor:
    """Loss = -Weight[t] * Input[n, t, d...] at t = Target[n, d...], reduced by `reduction`."""
    return _nll(x, target, weight, reduction, ignore_index)


@reference_op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(scores: Tensor, labels: Tensor, weights: Tensor | None = None, *,
                               ignore_index: int | None = None,
                               reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """(Output, LogProb): NegativeLogLikelihoodLoss of LogSoftmax(Scores) along axis 1.

    The second output is always produced; the executor drops it when the node omits it.
    """
    log_prob = torch.log_softmax(scores.to(compute_dtype(scores.dtype)), dim=1)
    loss = _nll(log_prob, labels, weights, reduction, ignore_index)
    return loss.to(scores.dtype), log_prob.to(scores.dtype)


"""The accuracy metrics of benchmarks/accuracy_real.py, and the issue's thresholds.

Every metric compares a quantized engine's outputs (`test`) with the fp32 engine's
(`reference`) on the same inputs, row by row (a row: one sentence's embedding, one image's
raw detector output). The ranking metric is the sentence-similarity task of
`ranking_agreement`, defined exactly in its docstring.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# The thresholds (tests/accuracy/test_real_weights.py asserts them).
MIN_COSINE = 0.99     # every sentence / image
MEAN_COSINE = 0.995   # MiniLM, over the evaluation sentences
MIN_RANKING = 0.98    # MiniLM, ranking_agreement
BOX_CHANNELS = 4      # YOLOv8 raw output [22, anchors]: cx, cy, w, h in pixels, then 18 class scores


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [N]: the cosine of a[i] and b[i], each row flattened (1 where both are zero)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((na == 0) | (nb == 0), (na == nb).astype(np.float64), dots / (na * nb))
    return np.clip(cos, -1.0, 1.0)


def ranking_agreement(test: np.ndarray, reference: np.ndarray) -> float:
    """The fraction of candidate pairs whose similarity order the test embeddings keep.

    The task: each of the N sentences in turn is the anchor i; the other N - 1 are candidates,
    scored by s_ij = cos(e_i, e_j). A pair is two candidates j < k of one anchor; it keeps its
    order when sign(s_ij - s_ik) is the same with the test embeddings as with the reference's
    (an exact tie counts as its own order). Agreement = kept pairs / all N * (N-1)(N-2)/2 pairs
    (62,125,250 for N = 500): Kendall's (1 + tau) / 2 per anchor, without tie correction,
    averaged over anchors (each has the same number of pairs).
    """
    t, r = _unit_rows(test), _unit_rows(reference)
    n = len(t)
    if n < 3:
        raise ValueError(f"ranking agreement needs at least 3 sentences, got {n}")
    st, sr = t @ t.T, r @ r.T  # [N, N]
    upper = np.triu_indices(n - 1, 1)
    kept = 0
    for i in range(n):
        others = np.arange(n) != i
        x, y = sr[i, others], st[i, others]  # [N-1]
        kept += int(np.count_nonzero(np.sign(x[:, None] - x[None, :])[upper] ==
                                     np.sign(y[:, None] - y[None, :])[upper]))
    return kept / (n * len(upper[0]))


def _unit_rows(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)


def embedding_metrics(test: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    cos = row_cosines(test, reference)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "worst": int(cos.argmin()),
            "below_min": int((cos < MIN_COSINE).sum()), "ranking": ranking_agreement(test, reference),
            "flat_cosine": float(row_cosines(test.reshape(1, -1), reference.reshape(1, -1))[0])}


def detector_metrics(test: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Per image: the raw output's cosine, and (context) the class scores' cosine and worst error."""
    cos = row_cosines(test, reference)
    scores_t, scores_r = test[:, BOX_CHANNELS:], reference[:, BOX_CHANNELS:]
    score_cos = row_cosines(scores_t, scores_r)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "worst": int(cos.argmin()),
            "below_min": int((cos < MIN_COSINE).sum()), "score_cosine_min": float(score_cos.min()),
            "score_cosine_mean": float(score_cos.mean()),
            "score_max_abs": float(np.abs(scores_t - scores_r).max())}

"""N-gram features: TfIdfVectorizer over integer token ids (string pools are not supported:
kiln has no string tensors). Counting runs on the host: inputs are short id sequences."""
from __future__ import annotations

from typing import Sequence

import torch

from kiln.kernels.reference.registry import reference_op

Tensor = torch.Tensor


def _pool_table(pool: Sequence[int], ngram_counts: Sequence[int], ngram_indexes: Sequence[int],
                min_n: int, max_n: int) -> dict[tuple[int, ...], int]:
    """n-gram (tuple of ids) -> output column, for the n-grams of lengths min_n..max_n."""
    table: dict[tuple[int, ...], int] = {}
    ngram_id = 0
    for size, start in enumerate(ngram_counts, 1):
        end = ngram_counts[size] if size < len(ngram_counts) else len(pool)
        for j in range(start, end, size):
            if min_n <= size <= max_n:
                table[tuple(pool[j:j + size])] = ngram_indexes[ngram_id]
            ngram_id += 1
    return table


def _count_row(row: list[int], table: dict[tuple[int, ...], int], min_n: int, max_n: int, max_skip: int,
               counts: list[int]) -> None:
    for n in range(min_n, max_n + 1):
        for start in range(len(row)):
            for skip in range(max_skip + 1 if n > 1 else 1):
                last = start + (n - 1) * (skip + 1)
                if last >= len(row):
                    break
                column = table.get(tuple(row[start:last + 1:skip + 1]))
                if column is not None:
                    counts[column] += 1


@reference_op("TfIdfVectorizer")
def tfidf_vectorizer(x: Tensor, *, mode: str, min_gram_length: int, max_gram_length: int,
                     max_skip_count: int, ngram_counts: Sequence[int], ngram_indexes: Sequence[int],
                     pool_int64s: Sequence[int] | None = None, pool_strings: Sequence[str] | None = None,
                     weights: Sequence[float] | None = None) -> Tensor:
    """Count the pool's n-grams (with up to max_skip_count skipped items) in each row of x and
    weight them: TF counts, IDF weight where present, TFIDF weight * count."""
    if pool_int64s is None:
        raise NotImplementedError("TfIdfVectorizer over strings: kiln has no string tensors")
    table = _pool_table(list(pool_int64s), list(ngram_counts), list(ngram_indexes), min_gram_length,
                        max_gram_length)
    width = max(ngram_indexes) + 1
    rows = x.reshape(1, -1) if x.dim() <= 1 else x
    out = []
    for row in rows.tolist():
        counts = [0] * width
        _count_row(row, table, min_gram_length, max_gram_length, max_skip_count, counts)
        out.append(counts)
    tf = torch.tensor(out, dtype=torch.float32)
    w = torch.tensor(list(weights), dtype=torch.float32) if weights else None
    if mode == "TF":
        y = tf
    elif mode == "IDF":
        y = (tf > 0).float() * (w if w is not None else 1.0)
    elif mode == "TFIDF":
        y = tf * w if w is not None else tf
    else:
        raise ValueError(f"TfIdfVectorizer mode must be TF, IDF or TFIDF, not {mode!r}")
    return (y[0] if x.dim() <= 1 else y).to(x.device)

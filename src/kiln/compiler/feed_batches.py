"""Feeds cut to the batches an engine's profile takes: the accuracy budget measures on the
calibration batches, whose size is the calibration's choice (e.g. 8), while the engine takes
only the batches of its profile (e.g. 32 to 256)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Feed = dict[str, np.ndarray]


def within(feed: Mapping[str, Any], profile: Mapping[str, Mapping[str, Sequence[int]]] | None) -> bool:
    """Whether every input of `feed` the profile names has a shape inside its min..max range."""
    if not profile:
        return True
    for name, r in profile.items():
        if name not in feed:
            continue
        shape = np.shape(feed[name])
        if len(shape) != len(r["min"]) or not all(lo <= d <= hi for lo, d, hi in zip(r["min"], shape, r["max"])):
            return False
    return True


def fit_to_profile(feeds: Sequence[Mapping[str, Any]], profile: Mapping[str, Mapping[str, Sequence[int]]] | None,
                   count: int) -> list[Feed]:
    """`feeds` as the engine can run them, at most `count` batches: unchanged where every feed fits
    the profile; otherwise their samples, concatenated along the batch axis (dim 0, the axis the
    profile's min and max differ in), cut into batches of the profile's opt batch (clamped to its
    range), the last one completed by repeating the first samples. Batches that still do not fit
    (other dims outside the range) are left out, so the result may be empty."""
    feeds = [{k: np.asarray(v) for k, v in f.items()} for f in feeds]
    if not feeds or all(within(f, profile) for f in feeds):
        return feeds[:count]
    assert profile is not None
    names = list(feeds[0])
    try:
        samples = {k: np.concatenate([f[k] for f in feeds]) for k in names}
    except ValueError:           # inputs of different ranks or item shapes across feeds
        return []
    total = len(samples[names[0]])
    if total == 0 or any(len(v) != total for v in samples.values()):
        return []
    batch = _opt_batch(profile, samples)
    if batch is None:
        return []
    out = []
    for start in range(0, total, batch):
        rows = np.arange(start, start + batch) % total
        out.append({k: v[rows] for k, v in samples.items()})
        if len(out) == count:
            break
    return [f for f in out if within(f, profile)]


def batches_drawn(feeds: Sequence[Mapping[str, Any]], profile: Mapping[str, Mapping[str, Sequence[int]]] | None,
                  count: int) -> int:
    """How many of `feeds`, from the first, fit_to_profile(feeds, profile, count) draws its samples
    from: the feeds it keeps as they are, else those holding the samples its batches take (all of
    them when the batches wrap around to the first samples)."""
    feeds = list(feeds)
    if not feeds or all(within(f, profile) for f in feeds):
        return min(count, len(feeds))
    sizes = [len(np.asarray(next(iter(f.values())))) if f else 0 for f in feeds]
    batch = _opt_batch(profile or {}, feeds[0])
    if batch is None:
        return len(feeds)
    rows = count * batch
    taken = 0
    for k, size in enumerate(sizes):
        taken += size
        if taken >= rows:
            return k + 1
    return len(feeds)


def _opt_batch(profile: Mapping[str, Mapping[str, Sequence[int]]], names: Mapping[str, Any]) -> int | None:
    """The batch fit_to_profile cuts into: the opt batch (clamped to its range) of the first profiled
    input among `names` that has dims; None when there is none."""
    ranged = next((r for k, r in profile.items() if k in names and len(r["min"]) > 0), None)
    return None if ranged is None else max(ranged["min"][0], min(ranged["opt"][0], ranged["max"][0]))

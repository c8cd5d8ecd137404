"""Activation memory planning by liveness.

Design note. Each activation slot lives from the step that writes it to the last step
that reads it (graph outputs live to the end). Two slots whose lifetimes do not overlap
may share memory. Offsets are assigned greedily, largest slot first, each at the lowest
offset (aligned) where it overlaps no already-placed slot that is alive at the same
time: the classic greedy-by-size heuristic, which is near-optimal on the chain-like
graphs of inference models. The peak is the arena size this plan needs; the sum of all
sizes is what allocating every activation separately would take.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from kiln.engine.plan import MemoryReport, Plan

ALIGN = 256


@dataclass(frozen=True, slots=True)
class Lifetime:
    slot: int
    first: int   # step index that writes it
    last: int    # last step index that reads it (inclusive)
    size: int    # bytes


def lifetimes(steps_io: Sequence[tuple[Sequence[int | None], Sequence[int]]], activation: set[int],
              sizes: dict[int, int], keep: set[int]) -> list[Lifetime]:
    """Lifetimes of the activation slots; slots in `keep` (graph outputs) live to the end."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    end = len(steps_io)
    for i, (ins, outs) in enumerate(steps_io):
        for s in outs:
            if s in activation:
                first.setdefault(s, i)
                last[s] = max(last.get(s, i), i)
        for s in ins:
            if s is not None and s in activation:
                last[s] = i
    return [Lifetime(s, first[s], end if s in keep else last[s], sizes.get(s, 0)) for s in first]


def aligned(size: int) -> int:
    """Bytes a slot takes in the arena (and in a separate allocation): rounded up to ALIGN."""
    return size + (-size) % ALIGN


def free_lists(n_steps: int, lives: Sequence[Lifetime]) -> tuple[tuple[int, ...], ...]:
    """For each step, the slots whose last reader it is (to release after it runs)."""
    out: list[list[int]] = [[] for _ in range(n_steps)]
    for life in lives:
        if life.last < n_steps:
            out[life.last].append(life.slot)
    return tuple(tuple(sorted(f)) for f in out)


def assign_offsets(lives: Sequence[Lifetime]) -> tuple[int, list[tuple[int, int, int]]]:
    """Greedy-by-size arena placement. Returns (arena bytes, [(slot, offset, size)])."""
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, aligned size, lifetime)
    result: list[tuple[int, int, int]] = []
    peak = 0
    for life in sorted(lives, key=lambda x: (-x.size, x.first, x.slot)):
        size = aligned(life.size)
        busy = sorted((off, off + sz) for off, sz, other in placed
                      if not (other.last < life.first or life.last < other.first))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, size, life))
        result.append((life.slot, offset, life.size))
        peak = max(peak, offset + size)
    result.sort()
    return peak, result


def plan_report(plan: Plan, sizes: dict[int, int]) -> MemoryReport:
    """The arena plan of `plan` given each activation's bytes (at one set of input shapes)."""
    activation = {i for i, s in enumerate(plan.slots) if s.kind == "activation"}
    keep = {b.slot for b in plan.outputs}
    lives = lifetimes([(s.inputs, s.outputs) for s in plan.steps], activation, sizes, keep)
    peak, offsets = assign_offsets(lives)
    # The total counts aligned sizes too, as the peak does, so that peak <= total always holds.
    return MemoryReport(peak, sum(aligned(life.size) for life in lives), tuple(tuple(o) for o in offsets))

"""Per-layer times of an engine, like trtexec --dumpProfile.

Design note. The executor's loop is not touched (no timing branch in the hot path): a
profiled run uses a shallow copy of the executor whose kernel table holds timed
wrappers of the same kernels. On CUDA each wrapper records a CUDA event before and
after its kernel (two events per step, made once and reused each iteration); on the
CPU it reads perf_counter. Each wrapper also takes the host wall time of the call,
which on CUDA is the launch cost: a step whose host time is close to its GPU time is
bound by launch overhead, not by its kernels.

The run is eager (one step after the other, no CUDA graph), so a step's GPU time is
the stream time between its two events: its kernels, plus any time the GPU waited for
the host to launch them. Steps inside control-flow bodies (If/Loop/Scan) are counted in
the step that runs the body.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from kiln.runtime.executor import Executor

if TYPE_CHECKING:
    from kiln.runtime.engine import Engine

Kernel = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class LayerTime:
    """One step's average time over the profiled iterations."""
    index: int          # position in the plan
    name: str
    op: str
    tactic: str
    ms: float           # GPU time on CUDA (events), wall time on CPU
    host_ms: float      # wall time of the kernel call on the host
    percent: float      # of the sum over all steps
    config: dict[str, Any] = field(default_factory=dict)  # the tactic's tuned config, if it has one

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "op": self.op, "tactic": self.tactic,
                "config": self.config, "ms": self.ms, "host_ms": self.host_ms, "percent": self.percent}


class _Timers:
    """Per-step timers: `wrap` times one kernel's calls, `collect` adds them up after each run."""

    def __init__(self, n: int, cuda: bool) -> None:
        self.cuda = cuda
        self.total = [0.0] * n
        self.host_total = [0.0] * n
        self._host = [0.0] * n
        self._ran = [False] * n
        self._events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                        for _ in range(n)] if cuda else []

    def wrap(self, k: int, kernel: Kernel) -> Kernel:
        def timed(*args: Any, **attrs: Any) -> Any:
            t0 = time.perf_counter()
            if self.cuda:
                self._events[k][0].record()
            result = kernel(*args, **attrs)
            if self.cuda:
                self._events[k][1].record()
            self._host[k] = time.perf_counter() - t0
            self._ran[k] = True
            return result
        return timed

    def collect(self, keep: bool = True) -> None:
        """After one run: add each step's time (waits for the GPU first); a warm-up run is dropped."""
        if self.cuda:
            torch.cuda.synchronize()
        for k, ran in enumerate(self._ran):
            if not ran or not keep:
                self._ran[k] = False
                continue
            host_ms = self._host[k] * 1e3
            self.total[k] += self._events[k][0].elapsed_time(self._events[k][1]) if self.cuda else host_ms
            self.host_total[k] += host_ms
            self._ran[k] = False


def timed_executor(executor: Executor, timers: _Timers) -> Executor:
    """A copy of `executor` sharing its plan, constants and attributes, with timed kernels."""
    profiled = copy.copy(executor)
    profiled._kernels = [timers.wrap(k, kernel) for k, kernel in enumerate(executor._kernels)]
    return profiled


def profile_executor(executor: Executor, feeds: dict[int, torch.Tensor], device: torch.device,
                     iterations: int, warmup: int = 1) -> list[LayerTime]:
    """Average per-step times over `iterations` eager runs, after `warmup` untimed ones."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    timers = _Timers(len(executor.plan.steps), device.type == "cuda")
    profiled = timed_executor(executor, timers)
    for _ in range(warmup):
        profiled.run(feeds, device=device)
        timers.collect(keep=False)
    for _ in range(iterations):
        profiled.run(feeds, device=device)
        timers.collect()
    return _layers(executor, timers, iterations)


def _layers(executor: Executor, timers: _Timers, iterations: int) -> list[LayerTime]:
    total = sum(timers.total) or 1.0
    return [LayerTime(k, s.name, s.op, s.tactic, t / iterations, h / iterations, 100.0 * t / total, dict(s.config))
            for k, (s, t, h) in enumerate(zip(executor.plan.steps, timers.total, timers.host_total))]


def profile_engine(engine: Engine, tensors: Mapping[str, torch.Tensor], iterations: int,
                   warmup: int = 1) -> list[LayerTime]:
    """Per-step times of `engine` on validated inputs `tensors` (by input name), in plan order."""
    from kiln.runtime.engine import math_mode

    feeds = {b.slot: tensors[b.name].to(engine.device) for b in engine.plan.inputs}
    with torch.inference_mode(), math_mode(engine.precision if engine.device.type == "cuda" else None):
        return profile_executor(engine.executor, feeds, engine.device, iterations, warmup)


def by_time(layers: list[LayerTime]) -> list[LayerTime]:
    """Slowest first; ties keep plan order."""
    return sorted(layers, key=lambda layer: (-layer.ms, layer.index))

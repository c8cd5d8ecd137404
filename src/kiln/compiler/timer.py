"""Timers for the auto-tuner: `timer(fn, repeats) -> [ms per run]`.

The tuner only needs the protocol, so tests pass a fake, deterministic timer and the
selection logic runs on CPU. The real one, `CudaTimer`, times each run with its own pair
of CUDA events after flushing the L2 cache, so every run starts cold as it would inside
a full network (a kernel timed back to back on warm caches looks faster than it is).

It measures GPU time only. An engine replays a CUDA graph, where launching costs nothing,
but a Python launch (a Triton kernel's launcher: ~20-50 us) can take longer than the
kernel runs, and a timer whose GPU sits idle waiting for the launch measures the launch.
So before each run the GPU is held busy (torch.cuda._sleep, HOLD_CYCLES) until the CPU has
queued the flush, the start event, the candidate and the end event; the events then
bracket the candidate's kernels back to back. Measured on an H200: a Triton LayerNorm of
[4096, 768] fp16 took 4.3 us replayed in a graph and 37 us by the unheld timer.

The hold must outlast the candidate's host path, which differs by tactic: a kernel taking TMA
descriptors builds them on every call (kiln::QConv's WINDOW walk: ~0.4 ms of Python and
descriptor encoding). A fixed hold of 0.2 ms let those configs be timed with the launch inside:
ResNet-50's 1x1 256->64 int8 conv was tuned at 176 us for a config that runs 24 us in a CUDA
graph, and the tuner took a 45 us one instead (H200, 2026-11-27). So the hold is sized per
candidate (hold_cycles_for): at least HOLD_CYCLES, else HOLD_MARGIN times the host time of one
untimed call, at the GPU clock's upper bound.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Protocol, Sequence

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any GPU's L2 (H100: 50 MB, B200: 126 MB)
# The timing method's version, part of the timing cache's environment: 2 sizes the hold per candidate.
METHOD_VERSION = 2
HOLD_CYCLES = 400_000               # ~0.2 ms at H100/H200 clocks: the least hold
HOLD_MARGIN = 3.0                   # the hold: this many times a candidate's host time per call
GPU_CYCLES_PER_SECOND = 2.0e9       # above H100/H200 boost clocks (1.98 GHz): a hold in cycles lasts at least that long
MAX_HOLD_CYCLES = 100_000_000       # 50 ms: a candidate that blocks on the GPU is not helped by more


class Timer(Protocol):
    def __call__(self, fn: Callable[[], Any], repeats: int) -> list[float]:
        """Run `fn` `repeats` times (after any warm-up of its own); each run's time in ms."""
        ...


def median(times: Sequence[float]) -> float:
    return float(statistics.median(times))


class CudaTimer:
    """CUDA-event timings of single runs on the current stream, each after an L2 flush."""

    def __init__(self, warmup: int = 1, flush_bytes: int = L2_FLUSH_BYTES, hold_cycles: int = HOLD_CYCLES) -> None:
        self.warmup = warmup
        self.flush_bytes = flush_bytes
        self.hold_cycles = hold_cycles
        self._flush: torch.Tensor | None = None  # allocated on first use, freed with the timer

    def __call__(self, fn: Callable[[], Any], repeats: int) -> list[float]:
        # The flush buffer is made and written in inference mode whatever mode the caller is in: one
        # made under the tuner's inference mode could not be written by a later caller outside it.
        with torch.inference_mode():
            if self._flush is None:
                self._flush = torch.empty(self.flush_bytes // 4, dtype=torch.int32, device="cuda")
            for _ in range(self.warmup):
                fn()
            hold = 0
            if self.hold_cycles:
                t0 = time.perf_counter()
                fn()                          # one more, untimed: its host time sizes the hold
                hold = hold_cycles_for(time.perf_counter() - t0, self.hold_cycles)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            for start, end in events:
                if hold:
                    torch.cuda._sleep(hold)  # the GPU waits while the CPU queues the run
                self._flush.zero_()  # writes evict the kernel's inputs from L2
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]


def hold_cycles_for(host_seconds: float, least: int = HOLD_CYCLES) -> int:
    """GPU cycles to hold before a run whose host path takes host_seconds (module docstring):
    HOLD_MARGIN times it at GPU_CYCLES_PER_SECOND, at least `least`, at most MAX_HOLD_CYCLES."""
    return int(min(max(least, HOLD_MARGIN * host_seconds * GPU_CYCLES_PER_SECOND), max(least, MAX_HOLD_CYCLES)))

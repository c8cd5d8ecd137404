"""CUDA graphs: capture the whole plan once per input-shape signature, then replay it.

Design note. The executor's Python loop costs microseconds per step; a graph replay
launches every kernel of the plan in one call. A signature (the input shapes and dtypes)
is captured lazily on first use, after one warm-up run on a side stream (which also makes
the host-to-device copies of host values: see tactics/placement.py). Inputs are copied
into the graph's static input tensors, outputs are cloned out of its static outputs.
At most `max_graphs` signatures are kept (least recently used goes first). A plan that
cannot be captured (a kernel that synchronises, data-dependent shapes) falls back to
the plain loop for that signature, for good.

The graphs' activations live in the engine's arena (arena.py): the warm-up run (on the
arena's stream) records each activation's size, and the capture first reserves the
liveness peak of those sizes in the arena's pool, then allocates from it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from kiln.runtime.arena import Arena
from kiln.runtime.executor import Executor
from kiln.runtime.memory import plan_report

Signature = tuple[tuple[int, tuple[int, ...], torch.dtype], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[int, torch.Tensor]
    outputs: list[torch.Tensor]
    memo: dict[tuple[int, int], torch.Tensor]


class GraphRunner:
    def __init__(self, executor: Executor, device: torch.device, max_graphs: int = 8) -> None:
        self.executor = executor
        self.device = device
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Signature, _Captured | None] = OrderedDict()
        self.arena: Arena | None = None
        self.last_failure: str | None = None  # why the last uncapturable signature could not be captured

    def run(self, feeds: dict[int, torch.Tensor], output_slots: Sequence[int]) -> list[torch.Tensor]:
        sig = tuple((slot, tuple(t.shape), t.dtype) for slot, t in sorted(feeds.items()))
        if sig not in self._graphs:
            self._graphs[sig] = self._capture(feeds, output_slots)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(sig)
        captured = self._graphs[sig]
        if captured is None:  # not capturable: the plain loop
            env = self.executor.run(feeds, device=self.device)
            return [env[s] for s in output_slots]
        for slot, t in feeds.items():
            captured.inputs[slot].copy_(t, non_blocking=True)
        captured.graph.replay()
        return [t.clone() for t in captured.outputs]

    @property
    def captured_signatures(self) -> int:
        return sum(1 for g in self._graphs.values() if g is not None)

    def _capture(self, feeds: dict[int, torch.Tensor], output_slots: Sequence[int]) -> _Captured | None:
        static = {slot: t.clone() for slot, t in feeds.items()}
        memo: dict[tuple[int, int], torch.Tensor] = {}
        sizes: dict[int, int] = {}
        if self.arena is None:
            self.arena = Arena(self.device)
        # The warm-up runs on the capture stream, so that what libraries set up per stream is
        # set up for that stream before the capture.
        stream = self.arena.stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):  # warm-up: kernels, autotune, copies, and the sizes to plan
                self.executor.run(static, device=self.device, h2d_memo=memo, record_sizes=sizes)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.arena.handle, stream=stream):
                self.arena.reserve(plan_report(self.executor.plan, sizes).peak_bytes)
                env = self.executor.run(static, device=self.device, h2d_memo=memo)
                outputs = [env[s] for s in output_slots]
        except Exception as exc:  # noqa: BLE001 - any capture failure means "run this signature eagerly"
            torch.cuda.synchronize(self.device)
            self.last_failure = f"{type(exc).__name__}: {exc}"
            return None
        return _Captured(graph, static, outputs, memo)

"""The auto-tuner's choice for one step: the fastest candidate whose results are right.

Design note. A step's candidates are (tactic, config) pairs, every config of every
tactic whose `supports` accepts the node. For each candidate, in order:
  1. the timing cache answers when it has the entry (nothing runs);
  2. otherwise the candidate runs once on the step's real inputs (which also compiles a
     Triton kernel before it is timed) and its outputs are checked against the oracle's,
     the reference tactic's, on the same inputs (tolerance.py); a candidate that raises
     or disagrees is out, and is never timed;
  3. it is timed `probe` times; when that median is over `drop_ratio` x the best so far
     it is dropped (early stop: a kernel 2x slower will not win on more samples), else
     it is timed `repeats - probe` times more and the median of all is its time.
Before step 2, on a CUDA device, the candidates the cache does not answer first run once each in
`warm_threads` threads (warm): Triton compiles a kernel variant on its first launch (about a
second for an 8-bit conv config; its compiler releases the GIL), so the variants compile side by
side instead of one after another; those runs' results are dropped, and every check and timing
above still runs on the calling thread, one candidate at a time, after all of them have finished.
The fastest valid candidate wins, ties going to the earlier one (the registry lists
specialised tactics first); the runner-up is kept for `kiln inspect`. The plan's run
goes on with the winner's outputs.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from kiln.compiler.timer import Timer, median
from kiln.compiler.timing_cache import Entry, TimingCache, candidate_key
from kiln.compiler.tolerance import mid_step, mismatch, quantized_steps
from kiln.engine.plan import Tuning
from kiln.errors import BuildError
from kiln.tactics import Tactic


@dataclass(frozen=True, slots=True)
class Candidate:
    tactic: Tactic
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return candidate_key(self.tactic.name, self.tactic.version, self.config)

    @property
    def label(self) -> str:
        return self.tactic.name + (f" {self.config}" if self.config else "")

    def run(self, args: Sequence[Any], attrs: dict[str, Any]) -> Any:
        # A non-empty config travels as the keyword `config`, as the executor passes Step.config.
        extra = {"config": dict(self.config)} if self.config else {}
        return self.tactic.kernel(*args, **attrs, **extra)


def expand(tactics: Sequence[Tactic]) -> list[Candidate]:
    """Every (tactic, config) pair, in the tactics' order."""
    return [Candidate(t, dict(c)) for t in tactics for c in t.configs]


@dataclass(frozen=True, slots=True)
class TuneSettings:
    repeats: int = 10          # timed runs per candidate (median)
    probe: int = 3             # first runs, after which a slow candidate is dropped
    drop_ratio: float = 2.0    # "slow": probe median > drop_ratio x the best so far
    tf32: bool = False         # a tf32 engine: float32 outputs checked at TF32's tolerance, timings cached apart
    warm_threads: int = min(8, os.cpu_count() or 1)   # threads compiling a step's candidates (warm); 1: none


@dataclass(frozen=True, slots=True)
class Trial:
    candidate: Candidate
    status: str                # "ok" | "dropped" (valid, early-stopped) | "invalid" | "error"
    ms: float | None = None
    detail: str = ""
    cached: bool = False

    @property
    def valid(self) -> bool:
        return self.status in ("ok", "dropped") and self.ms is not None


@dataclass(frozen=True, slots=True)
class Choice:
    best: Trial
    runner_up: Trial | None
    trials: tuple[Trial, ...]
    outputs: Any               # the winner's outputs on the step's inputs
    timer_calls: int

    @property
    def cached(self) -> bool:
        return all(t.cached for t in self.trials)

    def record(self) -> Tuning:
        ru = self.runner_up
        return Tuning(self.best.ms, None if ru is None else ru.candidate.tactic.name,
                      {} if ru is None else dict(ru.candidate.config), None if ru is None else ru.ms,
                      len(self.trials), self.cached)


def as_outputs(result: Any, n_outputs: int) -> tuple[Any, ...]:
    """A kernel's result as a tuple of the node's `n_outputs` outputs, by the executor's rule
    (the reference may return more, e.g. LayerNormalization's Mean, which the node does not use)."""
    if isinstance(result, torch.Tensor) or n_outputs == 1 and not isinstance(result, tuple):
        return (result,)
    return tuple(result)[:n_outputs]


def choose(cands: Sequence[Candidate], args: Sequence[Any], attrs: dict[str, Any], timer: Timer, n_outputs: int,
           settings: TuneSettings = TuneSettings(), cache: TimingCache | None = None, signature: str = "") -> Choice:
    """Time and check `cands` on `args` and pick one (see the design note). The oracle is the
    reference tactic (the last candidate when none is named so); its failure is raised."""
    oracle = next((c for c in cands if c.tactic.name.endswith(".reference")), cands[-1])
    trials: list[Trial | None] = [None] * len(cands)
    if cache is not None:
        for i, c in enumerate(cands):
            e = cache.get(signature, c.key)
            if e is not None:
                trials[i] = Trial(c, e.status, e.ms, "from the timing cache", cached=True)
    best_ms = min((t.ms for t in trials if t is not None and t.valid), default=float("inf"))
    pending = [c for c, t in zip(cands, trials) if t is None and c is not oracle]
    device = next((a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda), None)
    if device is not None and settings.warm_threads > 1 and len(pending) > 1:
        warm(pending, args, attrs, settings.warm_threads, device)
    reference: tuple[Any, ...] | None = None
    best_outputs: tuple[int, Any] | None = None
    calls = 0
    for i, c in enumerate(cands):
        if trials[i] is not None:
            continue
        if reference is None:
            reference = as_outputs(oracle.run(args, attrs), n_outputs)
        trial, outputs, n = _trial(c, c is oracle, reference, args, attrs, timer, n_outputs, settings, best_ms)
        trials[i], calls = trial, calls + n
        if cache is not None:
            cache.put(signature, c.key, Entry("ok" if trial.valid else trial.status, trial.ms))
        if trial.valid and trial.ms < best_ms:
            best_ms, best_outputs = trial.ms, (i, outputs)
    done = [t for t in trials if t is not None]
    ranked = sorted((i for i, t in enumerate(done) if t.valid), key=lambda i: (done[i].ms, i))
    for pos, i in enumerate(ranked):
        if best_outputs is not None and best_outputs[0] == i:
            outputs = best_outputs[1]
        else:
            try:  # a winner known from the cache: run it once for its outputs
                outputs = as_outputs(cands[i].run(args, attrs), n_outputs)
            except Exception as exc:  # noqa: BLE001 - a tactic that fails is skipped
                done[i] = Trial(cands[i], "error", None, f"{type(exc).__name__}: {exc}")
                continue
        runner = next((done[j] for j in ranked[pos + 1:] if done[j].valid), None)
        return Choice(done[i], runner, tuple(done), outputs, calls)
    tried = "; ".join(f"{t.candidate.label}: {t.status}" for t in done)
    raise BuildError(f"no candidate tactic gave valid results ({tried}); the timing cache may be stale: delete it "
                     "and build again.")


def warm(cands: Sequence[Candidate], args: Sequence[Any], attrs: dict[str, Any], threads: int,
         device: torch.device | None = None) -> int:
    """Run each candidate once, `threads` at a time (the design note's warm), in inference mode
    as the tuning run is and, on a CUDA `device`, on the calling thread's device and stream (both
    are per thread) once the inputs are ready; waits for the runs. Results and errors are dropped:
    the trials report them. Returns how many ran without error. The first runs on the calling
    thread (a process's first Triton launch sets up its driver)."""
    cuda = device is not None and device.type == "cuda"
    stream = torch.cuda.current_stream(device) if cuda else None
    if cuda:
        torch.cuda.synchronize(device)

    def one(c: Candidate) -> bool:
        try:
            with torch.inference_mode(), torch.cuda.device(device) if cuda else nullcontext(), \
                    torch.cuda.stream(stream) if cuda else nullcontext():
                c.run(args, attrs)
            return True
        except Exception:  # noqa: BLE001 - the candidate's trial reports the failure
            return False

    if not cands:
        return 0
    ran = int(one(cands[0]))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        ran += sum(pool.map(one, cands[1:]))
    if cuda:
        torch.cuda.synchronize(device)
    return ran


def _trial(c: Candidate, is_oracle: bool, reference: tuple[Any, ...], args: Sequence[Any], attrs: dict[str, Any],
           timer: Timer, n_outputs: int, settings: TuneSettings, best_ms: float) -> tuple[Trial, Any, int]:
    """Check then time one candidate; returns its trial, its outputs and the timer calls made."""
    calls = 0
    try:
        outputs = reference if is_oracle else as_outputs(c.run(args, attrs), n_outputs)
        why = None if is_oracle else mismatch(outputs, reference, c.tactic.op, settings.tf32,
                                              quantized_steps(c.tactic.op, args), mid_step(c.tactic.op, args))
        if why is not None:
            return Trial(c, "invalid", None, why), None, calls
        fn = lambda: c.run(args, attrs)  # noqa: E731
        first = timer(fn, settings.probe)
        calls += 1
        if median(first) > settings.drop_ratio * best_ms:
            return Trial(c, "dropped", median(first), "early stop"), None, calls
        rest: list[float] = []
        if settings.repeats > settings.probe:
            rest, calls = list(timer(fn, settings.repeats - settings.probe)), calls + 1
        return Trial(c, "ok", median(list(first) + list(rest))), outputs, calls
    except Exception as exc:  # noqa: BLE001 - a tactic that fails is skipped
        if is_oracle:
            raise
        return Trial(c, "error", None, f"{type(exc).__name__}: {exc}"), None, calls

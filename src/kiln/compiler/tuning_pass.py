"""The tuning pass: one run of the plan at the first profile's opt shapes, tuning as it goes.

The plan runs through the executor (same argument handling, host copies, control flow
and free lists as at inference) on synthetic inputs, with each device step's kernel
replaced by a call to the tuner: it asks for the step's candidates at the concrete
input shapes, picks one (tuner.choose) and returns that one's outputs, so the rest of
the run sees what the tuned engine will compute. The same run records every
activation's size for the memory plan, so tuning adds no pass over the plan.

Not tuned: host steps (shape arithmetic), steps with subgraph bodies, and steps with a
single candidate. A tactic must also accept the step at its symbolic shapes (as lowering
saw them), so a choice made at the opt shapes holds over the whole profile.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch

from kiln.compiler.timer import Timer
from kiln.compiler.timing_cache import TimingCache, op_signature
from kiln.compiler.tuner import Candidate, Choice, TuneSettings, choose, expand
from kiln.config import Profile
from kiln.engine.plan import Plan, Step, SubPlan
from kiln.runtime.executor import Executor, constants_by_slot
from kiln.runtime.synthetic import synthetic_inputs
from kiln.tactics import TacticQuery, candidates, get_tactic


class TuningStoppedWarning(UserWarning):
    """The tuning run failed at a step: the steps from there on keep their untuned tactics."""


MAX_REJECTED_LISTED = 50  # the header lists the first rejected candidates (and counts them all)


@dataclass(frozen=True, slots=True)
class TuneOutcome:
    plan: Plan                        # the steps with their tuned tactics, configs and records
    sizes: dict[int, int] | str       # activation bytes at the opt shapes, or why the run failed
    summary: dict[str, Any]           # for the engine header's build record


def tune_plan(plan: Plan, constants: dict[str, torch.Tensor], device: str, profile: Profile, timer: Timer,
              cache: TimingCache | None = None, progress: Callable[[str], None] | None = None,
              settings: TuneSettings = TuneSettings(), layout: str = "nchw",
              dim_max: Mapping[str, int] | None = None) -> TuneOutcome:
    """Tune `plan` (lowered from a graph with `layout`, see passes/choose_layout.py; `dim_max`:
    its symbolic dims' largest values over the build's profiles, TacticQuery.dim_max)."""
    t0 = time.perf_counter()
    if any(b.kind != "tensor" for b in plan.inputs):
        why = "the engine has sequence or optional inputs"
        return TuneOutcome(plan, why, {"skipped": why})
    dev = torch.device(device)
    tuner = _StepTuner(plan, device, layout, timer, cache, settings, progress or (lambda _msg: None), dim_max or {})
    executor = _TuningExecutor(plan, constants_by_slot(plan, constants, dev), dev, tuner)
    feeds = synthetic_inputs(plan.inputs, profile, "opt", dev)
    sizes: dict[int, int] | str = {}
    try:
        with torch.inference_mode():
            executor.run({b.slot: feeds[b.name] for b in plan.inputs}, record_sizes=sizes, device=dev)
    except Exception as exc:  # noqa: BLE001 - steps tuned before the failure keep their choice
        sizes = f"a run on synthetic inputs failed ({type(exc).__name__})"
        tuner.stats["stopped"] = f"{type(exc).__name__}: {exc}"[:500]
        warnings.warn(f"tuning stopped at step {tuner.reached} of {len(plan.steps)} ({type(exc).__name__}: "
                      f"{str(exc)[:300]}); steps {tuner.reached} to {len(plan.steps)} keep their first supported tactic, "
                      "untuned, so the engine may be slower than it could be. Synthetic inputs are not valid for "
                      "every model; if this one should accept them, report the failing layer.",
                      TuningStoppedWarning, stacklevel=2)
    finally:
        if cache is not None:
            cache.save()
    steps = tuple(_tuned(s, tuner.choices.get(k)) for k, s in enumerate(plan.steps))
    summary = {**tuner.stats, "seconds": round(time.perf_counter() - t0, 3)}
    return TuneOutcome(replace(plan, steps=steps), sizes, summary)


def _tuned(step: Step, choice: Choice | Candidate | None) -> Step:
    if choice is None:
        return step
    if isinstance(choice, Candidate):  # the only candidate at the opt shapes: chosen, not timed
        return replace(step, tactic=choice.tactic.name, config=dict(choice.config))
    c = choice.best.candidate
    return replace(step, tactic=c.tactic.name, config=dict(c.config), tuning=choice.record())


def _tunable(step: Step) -> bool:
    bodies = any(isinstance(v, SubPlan) or isinstance(v, list) and v and isinstance(v[0], SubPlan)
                 for v in step.attrs.values())
    return not step.host and not step.captures and not bodies


class _TuningExecutor(Executor):
    """The executor with each tunable step's kernel routed through the tuner."""

    def __init__(self, plan: Plan, constants: dict[int, torch.Tensor], device: torch.device,
                 tuner: _StepTuner) -> None:
        super().__init__(plan, constants, device)
        self._kernels = [_route(tuner, k) if _tunable(s) else kernel
                         for k, (s, kernel) in enumerate(zip(plan.steps, self._kernels))]


def _route(tuner: _StepTuner, k: int) -> Callable[..., Any]:
    def kernel(*args: Any, **attrs: Any) -> Any:
        return tuner(k, args, attrs)
    return kernel


class _StepTuner:
    def __init__(self, plan: Plan, device: str, layout: str, timer: Timer, cache: TimingCache | None,
                 settings: TuneSettings, progress: Callable[[str], None], dim_max: Mapping[str, int]) -> None:
        self.plan, self.device, self.layout, self.timer, self.cache = plan, device, layout, timer, cache
        self.dim_max = dim_max
        self.settings = settings
        self.progress = progress
        self.choices: dict[int, Choice | Candidate] = {}
        self.reached = 0   # the 1-based index of the last step routed through the tuner
        self.stats: dict[str, Any] = {"layers_timed": 0, "cache_hits": 0, "timer_calls": 0, "rejected_count": 0,
                                      "rejected": []}

    def __call__(self, k: int, args: tuple[Any, ...], attrs: dict[str, Any]) -> Any:
        self.reached = k + 1
        step = self.plan.steps[k]
        self.progress(f"tuning layer {k + 1}/{len(self.plan.steps)}")
        attrs = {a: v for a, v in attrs.items() if a != "config"}  # each candidate brings its own
        cands = self._candidates(step, args)
        lowered = get_tactic(step.tactic)
        if not cands:  # nothing accepts the concrete shapes (a tactic's supports is too loose): keep it
            return Candidate(lowered, dict(step.config)).run(args, attrs)
        if len(cands) == 1:
            self.choices[k] = cands[0]
            return cands[0].run(args, attrs)
        signature = op_signature(step.op, step.attrs, _shapes(args, len(step.inputs) - step.captures),
                                 self._dtypes(step)) + ("|tf32" if self.settings.tf32 else "")
        choice = choose(cands, args, attrs, self.timer, len(step.outputs), self.settings, self.cache, signature)
        self.choices[k] = choice
        self.stats["layers_timed"] += 1
        self.stats["cache_hits"] += choice.cached
        self.stats["timer_calls"] += choice.timer_calls
        for t in choice.trials:
            if t.status in ("invalid", "error"):
                self.stats["rejected_count"] += 1
                if len(self.stats["rejected"]) < MAX_REJECTED_LISTED:
                    self.stats["rejected"].append({"layer": step.name, "tactic": t.candidate.label,
                                                   "status": t.status, "detail": t.detail[:300]})
        return choice.outputs  # a tuple, one value per output, as the executor takes it

    def _dtypes(self, step: Step) -> tuple[str | None, ...]:
        ins = step.inputs[:len(step.inputs) - step.captures]
        return tuple(None if i is None else self.plan.slots[i].dtype for i in ins)

    def _candidates(self, step: Step, args: tuple[Any, ...]) -> list[Candidate]:
        """Candidates at the concrete shapes that also accept the symbolic ones, with the
        lowered tactic's placement (a host step stays a host step)."""
        dtypes = self._dtypes(step)
        ins = step.inputs[:len(step.inputs) - step.captures]
        symbolic = tuple(None if i is None else self.plan.slots[i].shape for i in ins)
        concrete = _shapes(args, len(ins))
        query = TacticQuery(step.op, self.device, dtypes, step.attrs, symbolic, self.layout,
                            len(step.outputs), self.dim_max)
        general = {t.name for t in candidates(query)}
        placement = get_tactic(step.tactic).placement
        found = candidates(replace(query, input_shapes=concrete))
        return expand([t for t in found if t.name in general and t.placement == placement])


def _shapes(args: tuple[Any, ...], n: int) -> tuple[tuple[int, ...] | None, ...]:
    """Each input's concrete dims (None: absent or not a tensor), padded to the step's arity."""
    shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args[:n]]
    return tuple(shapes + [None] * (n - len(shapes)))

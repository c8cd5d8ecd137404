"""How fast the accuracy budget's plan is, against the engine it would replace.

Run by the builder after the final build of an --accuracy-budget search (compiler/accuracy_budget.py)
when that build tunes. The found plan is worth having only if it beats the engine a user would
build instead, the one with every layer in the kept type (an fp16 engine for --int8/--fp8 --fp16,
fp32 otherwise). That engine is built tuned; both are timed at the first profile's opt shapes on
the same synthetic inputs (CUDA graphs where the engine uses them; the tuner's timer, median of
SPEED_REPEATS runs), and the report gives both times; a plan slower than that engine gets a
SlowPlanWarning naming both.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import onnx

from kiln.compiler.timer import median
from kiln.config import BuildConfig

SPEED_REPEATS = 20


class SlowPlanWarning(UserWarning):
    """The accuracy budget's mixed-precision plan runs slower than the engine it would replace."""


@dataclass(frozen=True, slots=True)
class PlanSpeed:
    """The budget's engine against the engine with every layer in the kept type, timed alike (ms)."""
    engine_ms: float
    wider_ms: float
    wider_precision: str

    @property
    def speedup(self) -> float:
        return self.wider_ms / self.engine_ms if self.engine_ms > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        return {"engine_ms": round(self.engine_ms, 4), "wider_ms": round(self.wider_ms, 4),
                "wider_precision": self.wider_precision, "speedup": round(self.speedup, 4)}


def plan_speed(model: str | onnx.ModelProto, config: BuildConfig, engine: Any, kept_precision: str,
               timer: Any) -> PlanSpeed:
    """Time `engine` (the budget's build of `model` with `config`) against a tuned engine of the
    same model with every layer in `kept_precision` (module docstring); warns when it is slower."""
    from kiln.compiler.builder import build

    wider_config = replace(config, precision=kept_precision, float_precision="fp32", accuracy_budget=None,
                           smooth_quant=None, weight_scales="channel", calib_data=None, calib_cache=None, dump_ir=None,
                           embed_source=False)
    wider = build(model, wider_config, timer=timer)
    engine_ms, wider_ms = (_time_engine(e, timer) for e in (engine, wider))
    speed = PlanSpeed(engine_ms, wider_ms, kept_precision)
    if engine_ms > wider_ms:
        warnings.warn(f"the accuracy budget's plan runs in {engine_ms:.4g} ms, slower than the {kept_precision} "
                      f"engine it would replace ({wider_ms:.4g} ms, {speed.speedup:.2f}x): build with "
                      f"precision {kept_precision} instead, or loosen the budget so fewer layers stay wider.",
                      SlowPlanWarning, stacklevel=3)
    return speed


def _time_engine(engine: Any, timer: Any) -> float:
    """Median ms of one engine run at its first profile's opt shapes on synthetic inputs (seed 0)."""
    from kiln.runtime.synthetic import synthetic_inputs

    profile = dict(engine.profiles[0]) if engine.profiles else None
    feeds = synthetic_inputs(engine.plan.inputs, profile, "opt", engine.device.type, 0)
    engine.run_tensors(feeds, validate=False)  # first run: a CUDA graph is captured here, not timed
    return median(timer(lambda: engine.run_tensors(feeds, validate=False), SPEED_REPEATS))

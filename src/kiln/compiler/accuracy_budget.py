"""--accuracy-budget METRIC=VALUE: the automatic mixed-precision search.

Design note. Given a reduced-precision BuildConfig (fp16, bf16, int8 or fp8) and a budget such as
cosine=0.999, find a small set of layers to keep in a wider type (as exact-name layer
precision rules) so that the engine's outputs stay within the budget of an fp32 engine's outputs.

The wider type (keep_precision): fp32 for fp16/bf16 engines; for int8/fp8 engines the type
their other float layers compute in (BuildConfig.float_precision: a layer left out of INT8 in
TensorRT's --int8 --fp16 runs in fp16), so that a kept GEMM costs an fp16 GEMM, not an fp32
one, and the mixed engine can still beat the float one. Where keeping every candidate in that
type misses the budget (the float engine alone is not accurate enough), fp32 is tried and,
if it meets the budget, used instead.

1. Feeds: the caller's, else (int8/fp8) the first config.budget_batches (3 unless set)
   calibration batches, else that many synthetic batches at the profile's opt shapes (seeds 0, 1,
   ...). More batches make the measured metric a closer estimate of the engine's on other
   inputs (a budget met on 3 batches may be missed by a hair elsewhere), at a run of each search
   build per batch. Reference:
   an fp32 engine of the same model and profiles run on them. With GPTQ weight rounding
   (weight_rounding "gptq"), which fits the weights to its calibration inputs, the search's
   builds calibrate on the calibration batches the feeds were not drawn from (when any are
   left; the result's held_out counts the others), so that the budget is measured on inputs
   GPTQ did not fit; the final build calibrates on all of them.
2. Build the reduced engine. Within budget: done, no layer kept.
3. Candidates (compiler/budget_candidates.py): the layers of the optimised graph
   (builder.optimized_graph, the graph layer rules are matched on) that the precision would
   reduce, at most `max_candidates`, weighted layers first.
4. Keeping all candidates must meet the budget (in the kept type, or in fp32 as above), else
   BuildError with the best value reached.
5. Sensitivity: for each candidate L, build with *only L reduced* (every other candidate kept
   wider) and measure the metric. Keeping L alone wider would say nothing about a chain of
   layers that all overflow (keeping one of them still leaves the others broken); reducing L
   alone measures the error L itself brings in. Rank by that error, worst first.
6. Binary search the smallest k in [1, N] for which keeping the k most sensitive layers
   meets the budget (monotone in practice; only a measured k ever becomes the answer, so the
   result is verified even where monotonicity fails).
Builds: 2 (reference, reduced) + 1 (all kept; 2 when fp32 is tried) + N (ranking) + ceil(log2 N)
(search). Search
builds do not tune (tune=False) and use a temporary calibration cache for int8/fp8, so each build
is cheap and calibrates once; the returned config keeps the caller's settings. Where the engine
checks fp16 overflow (int8/fp8 with fp16 float layers, given calibration data), only the reduced
and the first all-kept build measure it; the others reuse the union of the layers those two kept
in fp32 (between them every candidate has been measured both quantized and in fp16, and a
layer a build keeps wider by rule wins over the reused fp32 rule, as it would over a fresh one):
the check runs the reference ops on the CPU over all the calibration data, most of a search
build's time on MiniLM's float32 graph. The engine built with the result checks afresh.

Speed: compiler/plan_speed.py times the found plan against the engine it would replace.

Metrics: "cosine" (min over outputs of the cosine of the flattened outputs, all batches
together; higher is better), "max_abs" and "mean_abs" (max over outputs; lower is better).
An output with inf/NaN where the reference is finite (or another shape) scores the worst
value: -inf for cosine, inf for the errors.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, replace
from glob import escape
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from kiln.accuracy.metrics import output_metrics
from kiln.compiler.budget_candidates import candidates
from kiln.compiler.feed_batches import batches_drawn, fit_to_profile
from kiln.config import CALIBRATED_PRECISIONS, BuildConfig
from kiln.errors import BuildError, KilnError
from kiln.ir.graph import Node
from kiln.precision.overflow import OverflowReport
from kiln.precision.smooth_quant import SmoothQuantWarning

Progress = Callable[[str], None]
Feed = dict[str, np.ndarray]

# metric -> True when higher is better
METRICS: Mapping[str, bool] = {"cosine": True, "max_abs": False, "mean_abs": False}
REDUCED = ("fp16", "bf16", "int8", "fp8")
# Calibration batches read per batch measured on: enough samples for a batch of the engine's
# batch where the calibration's are smaller (compiler/feed_batches.py), without reading them all.
CALIBRATION_BATCHES_READ = 8


@dataclass(frozen=True, slots=True)
class RankedLayer:
    """A candidate layer and the metric of the engine in which it alone is reduced."""
    name: str
    op: str
    sensitivity: float

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.name, "op": self.op, "sensitivity": _json_float(self.sensitivity)}


@dataclass(frozen=True, slots=True)
class BudgetResult:
    """What the search found: the layers kept wider, in which type, and the config to build with."""
    metric: str
    target: float
    achieved: float  # the metric of the engine built with `config`
    reduced: float   # the metric of the engine with no layer kept
    kept: tuple[RankedLayer, ...]  # most sensitive first
    candidates: int  # layers ranked
    builds: int
    config: BuildConfig
    kept_precision: str = "fp32"  # the type the kept layers compute in (keep_precision)
    held_out: int = 0  # calibration batches measured on that the search's GPTQ builds did not calibrate on
    gptq_in_sample: bool = False  # GPTQ, and every batch measured on was one its builds calibrated on
    batches: int = 0  # batches the metric was measured on

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "target": self.target, "achieved": _json_float(self.achieved),
                "reduced": _json_float(self.reduced), "kept": [k.to_json() for k in self.kept],
                "kept_precision": self.kept_precision, "candidates": self.candidates, "builds": self.builds,
                "held_out_batches": self.held_out, "gptq_in_sample": self.gptq_in_sample, "batches": self.batches}


def parse_budget(text: str) -> tuple[str, float]:
    """'cosine=0.999' -> ("cosine", 0.999), checked."""
    metric, sep, value = text.partition("=")
    if not sep:
        raise KilnError(f"accuracy budget {text!r} is not METRIC=VALUE; give e.g. cosine=0.999 or max_abs=1e-2.")
    try:
        number = float(value)
    except ValueError:
        raise KilnError(f"accuracy budget {text!r} has value {value!r}, which is not a number; give e.g. "
                        "cosine=0.999.") from None
    return check_budget((metric.strip(), number))


def check_budget(budget: tuple[str, float]) -> tuple[str, float]:
    metric, value = budget
    if metric not in METRICS:
        raise KilnError(f"accuracy budget metric {metric!r} is not known; choose one of {', '.join(METRICS)} "
                        "(e.g. cosine=0.999).")
    if not math.isfinite(value) or (metric == "cosine" and not -1.0 <= value <= 1.0) or \
            (metric != "cosine" and value < 0):
        wanted = "within [-1, 1]" if metric == "cosine" else "a finite number >= 0"
        raise KilnError(f"accuracy budget {metric}={value} is out of range; the value must be {wanted}.")
    return metric, float(value)


def meets(metric: str, value: float, target: float) -> bool:
    return value >= target if METRICS[metric] else value <= target


def keep_precision(config: BuildConfig) -> str:
    """The type a kept layer computes in first (module docstring): an int8/fp8 engine's float
    precision, else fp32."""
    return config.float_precision if config.precision in CALIBRATED_PRECISIONS else "fp32"


def search(model: str | onnx.ModelProto, config: BuildConfig, budget: tuple[str, float],
           feeds: Sequence[Mapping[str, Any]] | None = None, calibration: Iterable[Mapping[str, Any]] | None = None,
           progress: Progress | None = None, max_candidates: int = 64) -> BudgetResult:
    """The layers to keep wider so that `config`'s engine meets `budget` (module docstring)."""
    metric, target = check_budget(budget)
    _check_config(config, max_candidates)
    say = progress or (lambda _msg: None)
    calib = list(calibration) if calibration is not None else None
    with tempfile.TemporaryDirectory(prefix="kiln-budget-") as tmp:
        run = _Runner(model, config, calib, tmp, say)
        reference = run.reference(feeds)
        reduced_engine = run.build(config.layer_precision, check=True)
        reduced = _measure(metric, reduced_engine, run.feeds, reference)
        say(f"accuracy budget: {config.precision} engine {metric}={_fmt(reduced)} (target {target})")
        if meets(metric, reduced, target):
            return BudgetResult(metric, target, reduced, reduced, (), 0, run.builds, config, keep_precision(config),
                                run.held_out, run.in_sample, len(run.feeds))
        nodes = candidates(model, config, reduced_engine, max_candidates)
        wider, best = _all_kept(run, metric, target, [n.name for n in nodes], reference)
        if not meets(metric, best, target):
            raise BuildError(f"accuracy budget {metric}={target} cannot be met: with all {len(nodes)} candidate "
                             f"layers kept in {wider} the {config.precision} engine reaches {metric}={_fmt(best)} "
                             f"(none kept: {_fmt(reduced)}). Loosen the budget, raise the number of candidates "
                             f"(now {max_candidates}), or build in fp32.")
        ranked = _rank(run, metric, nodes, reference, wider)
        k, achieved = _smallest_k(run, metric, target, ranked, reference, best, wider)
        kept = tuple(ranked[:k])
        say(f"accuracy budget: {k} layer(s) kept in {wider}, {metric}={_fmt(achieved)}")
        return BudgetResult(metric, target, achieved, reduced, kept, len(ranked), run.builds,
                            replace(config, layer_precision=_keep(config, [r.name for r in kept], wider)), wider,
                            run.held_out, run.in_sample, len(run.feeds))


def _check_config(config: BuildConfig, max_candidates: int) -> None:
    if config.precision not in REDUCED or config.strongly_typed:
        raise BuildError(f"an accuracy budget chooses which layers of a reduced-precision engine to keep wider, "
                         f"but this build is {config.precision}{' and strongly typed' if config.strongly_typed else ''}"
                         f"; build with precision {', '.join(REDUCED)} (e.g. --fp16), or drop the budget.")
    if max_candidates < 1:
        raise BuildError(f"max_candidates {max_candidates} leaves no layer to rank; give at least 1.")


class _Runner:
    """Builds engines of one model and runs them on the evaluation feeds, counting builds."""

    def __init__(self, model: str | onnx.ModelProto, config: BuildConfig, calibration: list | None, tmp: str,
                 say: Progress) -> None:
        self.model, self.calibration, self.say = model, calibration, say
        # Search builds: no tuning, no IR dumps, no embedded source; int8 calibrates once into a cache.
        # GPTQ's search builds calibrate on the batches the budget is not measured on (a cache of
        # their own, so the caller's keeps the full calibration)
        self.gptq = config.precision in CALIBRATED_PRECISIONS and config.weight_rounding == "gptq"
        cache = (None if self.gptq else config.calib_cache) or \
            (str(Path(tmp) / "ranges.json") if config.precision in CALIBRATED_PRECISIONS else None)
        self.config = replace(config, tune=False, dump_ir=None, embed_source=False, calib_cache=cache)
        self.builds = 0
        self.overflow: OverflowReport | None = None  # the fp16 overflow check's report the later builds reuse
        self.feeds: list[Feed] = []
        self.held_out = 0  # leading calibration batches the search's builds leave out (GPTQ)
        self.in_sample = False  # GPTQ with no batch left to hold out: measured where it calibrated

    def build(self, rules: tuple[tuple[str, str], ...], precision: str | None = None, check: bool = False) -> Any:
        """An untuned engine with layer precision `rules` (or fp32). `check`: its fp16 overflow
        check's report joins the one later builds reuse (module docstring, step 5)."""
        from kiln.compiler.builder import build

        self.builds += 1
        if precision == "fp32":
            config = BuildConfig(device=self.config.device, profiles=self.config.profiles, tune=False,
                                 embed_source=False)
        else:
            config = replace(self.config, layer_precision=rules)
        calibration = self.calibration[self.held_out:] if self.calibration is not None else None
        with warnings.catch_warnings():
            # A search build keeping most layers wider may leave SmoothQuant nothing to do; the
            # engine built with the plan warns where that holds for it.
            warnings.simplefilter("ignore", SmoothQuantWarning)
            engine = build(self.model, config, calibration=calibration if config.precision in CALIBRATED_PRECISIONS
                           else None, overflow=None if check else self.overflow)
        found = engine.header["build"].get("fp16_overflow")
        if check and found is not None:
            report = OverflowReport.from_json(found)
            if self.overflow is not None:  # the union of the layers kept
                names = {o.layer for o in self.overflow.kept}
                report = replace(report, kept=self.overflow.kept + tuple(o for o in report.kept if o.layer not in names))
            self.overflow = report
        return engine

    def reference(self, feeds: Sequence[Mapping[str, Any]] | None) -> list[dict[str, np.ndarray]]:
        self.say("accuracy budget: fp32 reference")
        engine = self.build((), "fp32")
        self.feeds, drawn = _eval_feeds(engine, feeds, self.calibration, self.config)
        if self.gptq and 0 < drawn < len(self.calibration or ()):
            # GPTQ fits the weights to its calibration inputs: measured on those, the budget would look
            # better than it is on other inputs
            self.held_out = drawn
            self.say(f"accuracy budget: GPTQ calibrates on {len(self.calibration) - drawn} batch(es), the budget is "
                     f"measured on the other {drawn}")
        elif self.gptq and drawn > 0 and drawn >= len(self.calibration or ()):
            self.in_sample = True
            self.say(f"accuracy budget: measured on the {drawn} batch(es) GPTQ also calibrates on (no other left): "
                     f"the budget may not hold on other inputs; give more than {drawn} calibration batches")
        return [_run(engine, f) for f in self.feeds]


def _eval_feeds(engine: Any, feeds: Sequence[Mapping[str, Any]] | None, calibration: list | None,
                config: BuildConfig) -> tuple[list[Feed], int]:
    """The feeds to measure on, and how many leading calibration batches they were drawn from."""
    from kiln.accuracy.compare import to_numpy
    from kiln.runtime.synthetic import synthetic_inputs

    drawn = 0
    if feeds is not None:
        chosen = list(feeds)
    else:
        profile = dict(engine.profiles[0]) if engine.profiles else None
        # Calibration batches, cut to the profile's batch where theirs is outside it.
        count = config.budget_batches
        read = calibration[:CALIBRATION_BATCHES_READ * count] \
            if config.precision in CALIBRATED_PRECISIONS and calibration is not None else []
        chosen = fit_to_profile(read, profile, count) if read else []
        if chosen:
            drawn = batches_drawn(read, profile, count)
        else:
            try:
                chosen = [{k: to_numpy(v) for k, v in
                           synthetic_inputs(engine.plan.inputs, profile, "opt", "cpu", s).items()}
                          for s in range(count)]
            except ValueError as exc:
                raise BuildError(f"the accuracy budget needs inputs to measure on: {exc}; give shapes (--shapes) "
                                 "or pass feeds to search().") from None
    if not chosen:
        raise BuildError("the accuracy budget has no inputs to measure on (the feeds are empty); give at least one.")
    return [{k: np.asarray(v) for k, v in f.items()} for f in chosen], drawn


def _run(engine: Any, feed: Feed) -> dict[str, np.ndarray]:
    from kiln.accuracy.compare import run_engine
    from kiln.runtime.arrays import array_to_tensor

    return run_engine(engine, {k: array_to_tensor(v) for k, v in feed.items()})


def _measure(metric: str, engine: Any, feeds: list[Feed], reference: list[dict[str, np.ndarray]]) -> float:
    """The metric over all outputs (worst output) and all feeds (flattened together)."""
    runs = [_run(engine, f) for f in feeds]
    values = []
    for name in reference[0]:
        refs, outs = [r[name] for r in reference], [o.get(name) for o in runs]
        if not all(isinstance(x, np.ndarray) for x in (*refs, *outs)):
            continue  # sequences and optional outputs are not measured
        if any(o.shape != r.shape for o, r in zip(outs, refs)):
            return -math.inf if METRICS[metric] else math.inf
        m = output_metrics(name, np.concatenate([o.reshape(-1) for o in outs]),
                           np.concatenate([r.reshape(-1) for r in refs]), 0.0, 0.0)
        value = getattr(m, metric)
        if m.nonfinite_mismatches or math.isnan(value):
            value = -math.inf if METRICS[metric] else math.inf
        values.append(value)
    if not values:
        raise BuildError("the accuracy budget measures tensor outputs, but the model has none.")
    return min(values) if METRICS[metric] else max(values)


def _all_kept(run: _Runner, metric: str, target: float, names: list[str],
              reference: list[dict[str, np.ndarray]]) -> tuple[str, float]:
    """(kept type, metric) with every candidate kept: keep_precision's type, else fp32 where
    that misses the budget (module docstring)."""
    wider = keep_precision(run.config)
    best = _measure(metric, run.build(_keep(run.config, names, wider), check=True), run.feeds, reference)
    if wider != "fp32" and not meets(metric, best, target):
        run.say(f"accuracy budget: every candidate in {wider} gives {metric}={_fmt(best)}; trying fp32")
        wider, best = "fp32", _measure(metric, run.build(_keep(run.config, names, "fp32")), run.feeds, reference)
    return wider, best


def _rank(run: _Runner, metric: str, nodes: list[Node], reference: list[dict[str, np.ndarray]],
          wider: str) -> list[RankedLayer]:
    """Each candidate's metric when it alone is reduced; worst first (stable: graph order on ties)."""
    names = [n.name for n in nodes]
    ranked = []
    for i, n in enumerate(nodes):
        run.say(f"accuracy budget: ranking layer {i + 1}/{len(nodes)}")
        others = [m for m in names if m != n.name]
        value = _measure(metric, run.build(_keep(run.config, others, wider)), run.feeds, reference)
        ranked.append(RankedLayer(n.name, n.qualified_op, value))
    return sorted(ranked, key=lambda r: r.sensitivity, reverse=not METRICS[metric])


def _smallest_k(run: _Runner, metric: str, target: float, ranked: list[RankedLayer],
                reference: list[dict[str, np.ndarray]], best: float, wider: str) -> tuple[int, float]:
    """Binary search over k in [1, N]; hi is always a k measured to meet the budget."""
    lo, hi, at_hi = 1, len(ranked), best
    while lo < hi:
        mid = (lo + hi) // 2
        run.say(f"accuracy budget: trying {mid} layer(s) in {wider}")
        value = _measure(metric, run.build(_keep(run.config, [r.name for r in ranked[:mid]], wider)), run.feeds,
                         reference)
        if meets(metric, value, target):
            hi, at_hi = mid, value
        else:
            lo = mid + 1
    return hi, at_hi


def _keep(config: BuildConfig, names: Sequence[str], precision: str) -> tuple[tuple[str, str], ...]:
    """The config's own rules (they win), then one exact-name rule per layer to `precision`."""
    return config.layer_precision + tuple((_exact(n), precision) for n in names)


def _exact(name: str) -> str:
    """A pattern matching only `name`: glob characters escaped (match_layer_rules also uses fnmatch)."""
    return escape(name) if any(c in name for c in "*?[") else name


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")

"""The suite's kiln builds: calibration once per model, then per precision a cold build and a
warm rebuild from the timing cache the cold one wrote.

Cold: the build starts from an empty timing cache (a fresh file per model and precision in
the run's scratch folder; --timing-cache PATH shares one file across builds and runs instead)
and times every tactic candidate on the GPU. Warm: the same build again with that file, so
the tuner reads its timings instead of measuring them, as TensorRT's timing cache does. By
default the warm build runs in a fresh process (benchmarks/rebuild.py), as a later `kiln build`
would: only the caches on disk help it. Both wall times are recorded with the tuner's own
counts (layers timed, cache hits, timer calls), so a warm build that was not warm (another
GPU, torch, or config) shows as such, and with whether both chose the same kernels. The
engine the suite times is the cold one.

int8/fp8: the activation ranges are computed once per model, on the CPU with the reference
ops over the calibration samples (benchmarks/samples.py), into a calibration cache that every
int8 and fp8 build of the model then reads, so their build times exclude calibration, which
is reported on its own. The samples are passed to the builds too, in case the cache misses.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import kiln
from benchmarks import measure, models, rebuild, samples
from benchmarks.models import BenchModel

WARM_MODES = ("new-process", "in-process", "off")
WARM_TIMEOUT_S = 1800  # a warm rebuild that runs longer than this is reported as failed


@dataclass(frozen=True, slots=True)
class Calibration:
    cache: Path                            # the calibration cache every int8/fp8 build reads
    feeds: list[dict[str, Any]]            # the calibration batches (in case the cache misses)
    record: dict[str, Any]                 # for the report: method, batches, samples, seconds, data


def profile(model: BenchModel, batches: list[int]) -> kiln.Profile:
    return kiln.Profile.from_ranges(models.profile_ranges(model, batches))


def calibration_batch(batches: list[int], wanted: int, samples_wanted: int) -> int:
    """Samples per calibration batch: the batch itself when the profile fixes it (one batch
    size only: the graph then has a static batch dim), else `wanted` (at most the samples)."""
    return batches[0] if len(batches) == 1 else min(wanted, samples_wanted)


def calibrate(model: BenchModel, path: Path, batches: list[int], args: argparse.Namespace,
              scratch: Path, log: Callable[[str], None]) -> Calibration:
    """Activation ranges for `model`'s int8/fp8 builds, written to a calibration cache in `scratch`."""
    from kiln.compiler.builder import optimized_graph
    from kiln.compiler.quantize_step import activation_ranges

    batch = calibration_batch(batches, args.calib_batch, args.calib_samples)
    feeds = samples.calibration_feeds(model, args.calib_samples, batch, args.seed)
    cache = scratch / f"{model.name}.{args.calib_method}.calib.json"
    config = kiln.BuildConfig(precision="int8", device="cpu", profiles=(profile(model, batches),),
                              calib_cache=str(cache), calib_method=args.calib_method)
    t0 = time.perf_counter()
    front = optimized_graph(str(path), config, lambda _msg: None)
    _ranges, record = activation_ranges(front.graph, front.source, config, calibration=feeds, reuse_cache=False)
    seconds = time.perf_counter() - t0
    record = {**record, "seconds": seconds, "samples": batch * len(feeds), "batch": batch,
              "data": samples.describe(model)}
    log(f"{model.name}: calibrated ({args.calib_method}) on {record['samples']} samples in {seconds:.1f} s")
    return Calibration(cache, feeds, record)


def build_config(model: BenchModel, precision: str, batches: list[int], args: argparse.Namespace,
                 scratch: Path, calibration: Calibration | None) -> kiln.BuildConfig:
    timing_cache = args.timing_cache or scratch / f"{model.name}.{precision}.timing.json"
    quantized = precision in measure.QUANTIZED
    return kiln.BuildConfig(precision=precision, device=args.device.split(":")[0],
                            profiles=(profile(model, batches),), timing_cache=str(timing_cache),
                            calib_cache=str(calibration.cache) if quantized and calibration else None,
                            calib_method=args.calib_method,
                            smooth_quant=getattr(args, "smooth_quant", None) if quantized else None,
                            weight_scales=getattr(args, "weight_scales", "channel") if quantized else "channel",
                            quantize_attention=quantized and getattr(args, "quantize_attention", False),
                            accuracy_budget=getattr(args, "accuracy_budget", None) if quantized else None,
                            float_precision=getattr(args, "quant_float", "fp16") if quantized else "fp32")


def build(model: BenchModel, path: Path, precision: str, batches: list[int], args: argparse.Namespace,
          scratch: Path, entry: dict[str, Any], log: Callable[[str], None],
          calibration: Calibration | None = None) -> Any:
    """The cold engine (None when kiln cannot build it); the record goes to entry["builds"][precision]."""
    config = build_config(model, precision, batches, args, scratch, calibration)
    t0 = time.perf_counter()
    try:
        engine = kiln.build(str(path), config, calibration=calibration.feeds if config.calib_cache else None,
                            progress=lambda msg: log(f"{model.name} {precision}: {msg}")
                            if msg.startswith("accuracy budget") else None)
    except Exception as exc:  # noqa: BLE001 - a model kiln cannot build is a finding, not a crash
        entry["builds"][precision] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        log(f"{model.name} {precision}: kiln build FAILED: {exc}")
        return None
    record = engine_record(engine, precision, time.perf_counter() - t0)
    record["timing_cache"] = config.timing_cache
    record["warm"] = warm_rebuild(path, config, args.warm_build, log)
    if "seconds" in record["warm"]:
        record["warm_build_s"] = record["warm"]["seconds"]
        record["same_kernels"] = record["warm"]["plan_digest"] == record["plan_digest"]
    entry["builds"][precision] = record
    warm = f"; warm {record['warm_build_s']:.1f} s" if "warm_build_s" in record else ""
    log(f"{model.name} {precision}: kiln build {record['build_s']:.1f} s{warm}; {record['steps']} steps; "
        f"{record['tactic_kinds']}")
    return engine


def engine_record(engine: Any, precision: str, seconds: float) -> dict[str, Any]:
    """What the report says about one built engine."""
    # which kernels the engine runs: tactic ids end in their implementation ("reference", "triton", ...)
    kinds = collections.Counter(step.tactic.rsplit(".", 1)[-1] for step in engine.plan.steps)
    record: dict[str, Any] = {"build_s": seconds, "steps": len(engine.plan.steps),
                              "tactic_kinds": dict(kinds.most_common()), "tuning": rebuild.tuning_counts(engine),
                              "plan_digest": rebuild.plan_digest(engine)}
    quant = engine.header["build"].get(precision) if precision in measure.QUANTIZED else None
    if quant:
        record.update(quantized_layers=len(quant["quantized"]), kept_float_layers=len(quant["kept_float"]),
                      calibration_source=quant["calibration"]["source"],
                      quantized_kinds=dict(collections.Counter(
                          s.tactic for s in engine.plan.steps if s.op.startswith("kiln::Q"))))
    budget = engine.header["build"].get("accuracy_budget")
    if budget:
        record["budget"] = {"metric": budget["metric"], "target": budget["target"], "achieved": budget["achieved"],
                            "kept": len(budget["kept"]), "kept_precision": budget.get("kept_precision", "fp32"),
                            "candidates": budget["candidates"], "builds": budget["builds"],
                            **({"speed": budget["speed"]} if "speed" in budget else {})}
    return record


def warm_rebuild(path: Path, config: kiln.BuildConfig, mode: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The same build again, reading the timing cache the cold build wrote (module docstring)."""
    if mode == "off":
        return {"skipped": "--warm-build off"}
    try:
        if mode == "in-process":
            return {**rebuild.rebuild(path, config), "mode": mode}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(rebuild.config_to_json(config), f)
        try:
            done = subprocess.run([sys.executable, str(Path(rebuild.__file__)), str(path), f.name],
                                  capture_output=True, text=True, timeout=WARM_TIMEOUT_S)
        finally:
            Path(f.name).unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "mode": mode}
    except Exception as exc:  # noqa: BLE001 - the cold engine is still timed
        log(f"warm rebuild of {path.name} ({config.precision}) FAILED\n{traceback.format_exc()}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500], "mode": mode}

"""`kiln bench`: trtexec-style throughput and latency of an engine.

Design note. One timed loop. On CPU each iteration is timed with perf_counter. On CUDA
each iteration copies pinned host inputs to the device, computes, and copies the
outputs back into pinned host buffers, with a CUDA event between the phases; the wall
time of the whole iteration is the end-to-end latency and the events give trtexec's
H2D / GPU Compute / D2H split (compute runs on device-resident inputs, unvalidated).
The compute phase is a callable from `make_compute`, so CUDA-graph replay (and a
--no-cuda-graph switch) slots in there without touching the loop.

Memory, as trtexec reports it: the engine's weights on the device, the activation memory its
liveness plan needs at the profile's opt shapes (and the sum of all activations, had none been
reused) and, on a GPU, the device memory the runs actually took above what was allocated before
them (torch's allocator peak: activations, the CUDA-graph pool, inputs and outputs). With CUDA
graphs it adds the activation arena (runtime/arena.py): the liveness peak it was reserved for
at the benchmarked shapes and the bytes its pool holds.

--profile-layers then runs the engine eagerly (no CUDA graph) with a timer around each
step (kiln.runtime.profiler) and prints the steps slowest first, as trtexec's
--dumpProfile does; the throughput figures above it are unaffected by the timers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
import numpy as np

from kiln.cli import output
from kiln.cli.feeds import batch_size, random_feeds
from kiln.cli.shapes import parse_shapes

if TYPE_CHECKING:
    import torch

    from kiln.runtime.engine import Engine

Compute = Callable[[dict[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]
DEFAULT_ITERATIONS = 10
DEFAULT_DURATION = 3.0
PROFILE_RUNS = 100


@dataclass(slots=True)
class Timings:
    """Per-iteration times in milliseconds; the split lists stay empty on CPU."""
    latency: list[float] = field(default_factory=list)
    h2d: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    d2h: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0


def make_compute(engine: Engine) -> Compute:
    """The compute phase on device-resident inputs (inputs were validated once before)."""
    return lambda feeds: engine.run_tensors(feeds, validate=False)


def stop_rule(iterations: int | None, duration: float | None) -> tuple[int, float]:
    """trtexec runs at least N iterations and at least S seconds; given only N, just N."""
    if iterations is None and duration is None:
        return DEFAULT_ITERATIONS, DEFAULT_DURATION
    return (iterations if iterations is not None else 1), (duration if duration is not None else 0.0)


def bench_cpu(compute: Compute, feeds: dict[str, torch.Tensor], warmup: int, iterations: int,
              duration: float) -> Timings:
    for _ in range(warmup):
        compute(feeds)
    t = Timings()
    start = time.perf_counter()
    while len(t.latency) < iterations or time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        compute(feeds)
        t.latency.append((time.perf_counter() - t0) * 1e3)
    t.wall_seconds = time.perf_counter() - start
    return t


def bench_cuda(compute: Compute, feeds: dict[str, torch.Tensor], warmup: int, iterations: int,
               duration: float, device: torch.device) -> Timings:
    import torch

    host = {k: v.cpu().pin_memory() for k, v in feeds.items()}
    device_feeds = {k: v.to(device) for k, v in host.items()}
    for _ in range(max(warmup, 1)):
        outs = compute(device_feeds)
    torch.cuda.synchronize(device)
    host_out = {k: torch.empty(v.shape, dtype=v.dtype, device="cpu").pin_memory() for k, v in outs.items()}
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    t = Timings()
    start = time.perf_counter()
    while len(t.latency) < iterations or time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        events[0].record()
        dev = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        events[1].record()
        outs = compute(dev)
        events[2].record()
        for k, v in outs.items():
            host_out[k].copy_(v, non_blocking=True)
        events[3].record()
        events[3].synchronize()
        t.latency.append((time.perf_counter() - t0) * 1e3)
        t.h2d.append(events[0].elapsed_time(events[1]))
        t.compute.append(events[1].elapsed_time(events[2]))
        t.d2h.append(events[2].elapsed_time(events[3]))
    t.wall_seconds = time.perf_counter() - start
    return t


def stats(ms: list[float]) -> dict[str, float] | None:
    if not ms:
        return None
    a = np.asarray(ms, dtype=np.float64)
    p90, p95, p99 = np.percentile(a, [90, 95, 99])
    return {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a)),
            "p90": float(p90), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


@click.command("bench")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help=f"Run at least N timed inferences [default: {DEFAULT_ITERATIONS}].")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help=f"Run for at least SECONDS [default: {DEFAULT_DURATION:g}, or 0 when only --iterations is given].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed inferences before measuring.")
@click.option("--shapes", metavar="NAME:DIMS[,...]", help="Input shapes (default: the profile's opt shapes).")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="On a GPU, replay the engine as one captured CUDA graph per input shape.")
@click.option("--profile-layers", is_flag=True,
              help="Also time each layer (step) in an eager run, averaged over the iterations, and list "
                   "them slowest first with op, tactic and share of the total.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def bench(engine_path: Path, iterations: int | None, duration: float | None, warmup: int, shapes: str | None,
          cuda_graph: bool, profile_layers: bool, as_json: bool) -> None:
    """Measure ENGINE's throughput and latency on random inputs.

    Reports inferences/s and samples/s (batch = dim 0 of the first input) and latency
    min/mean/median/p90/p95/p99/max in ms. On a GPU, latency is end to end (host->device
    input copies, compute, device->host output copies) and is also split into H2D, GPU
    compute (CUDA events, device-resident inputs) and D2H, as trtexec does.

    With --profile-layers, each layer's time (CUDA events around each step of an eager
    run on a GPU, wall time on the CPU) is averaged over as many runs as were timed
    (at most 100 unless --iterations is given).
    """
    import kiln

    engine = kiln.load(engine_path)
    engine.use_cuda_graphs = cuda_graph and engine.device.type == "cuda"
    feeds = random_feeds(engine, parse_shapes(shapes))
    before = _allocated(engine)
    engine.run_tensors(feeds)  # validates the inputs once, so the timed loop need not
    n, seconds = stop_rule(iterations, duration)
    compute = make_compute(engine)
    if engine.device.type == "cuda":
        t = bench_cuda(compute, feeds, warmup, n, seconds, engine.device)
    else:
        t = bench_cpu(compute, feeds, warmup, n, seconds)
    report = _report(engine_path, engine, feeds, t, warmup)
    report["memory"] = _memory(engine, before)
    if profile_layers:
        # as many runs as were timed, but no more than PROFILE_RUNS unless --iterations asked for them
        runs = iterations if iterations is not None else min(len(t.latency), PROFILE_RUNS)
        report["layers"] = _profile(engine, feeds, runs, warmup)
    if as_json:
        output.emit_json(report)
    else:
        _print(report)
        if profile_layers:
            _print_layers(report["layers"])


def _profile(engine: Engine, feeds: dict[str, Any], iterations: int, warmup: int) -> dict[str, Any]:
    from kiln.runtime.profiler import by_time, profile_engine

    layers = by_time(profile_engine(engine, feeds, iterations, max(warmup, 1)))
    return {"iterations": iterations, "cuda_graph": False,
            "timer": "cuda events" if engine.device.type == "cuda" else "perf_counter",
            "total_ms": sum(layer.ms for layer in layers), "steps": [layer.to_json() for layer in layers]}


def _allocated(engine: Engine) -> int | None:
    """Bytes torch's CUDA allocator holds for tensors now, its peak counter reset (None off the GPU)."""
    if engine.device.type != "cuda":
        return None
    import torch

    torch.cuda.synchronize(engine.device)
    torch.cuda.reset_peak_memory_stats(engine.device)
    return torch.cuda.memory_allocated(engine.device)


def _memory(engine: Engine, before: int | None) -> dict[str, Any]:
    """Weights, planned activations and (GPU) the measured peak above `before` (module docstring)."""
    measured = None
    if before is not None:
        import torch

        torch.cuda.synchronize(engine.device)
        measured = torch.cuda.max_memory_allocated(engine.device) - before
    return {"weights_bytes": engine.weights_bytes, "planned_activation_bytes": engine.plan.memory.peak_bytes,
            "total_activation_bytes": engine.plan.memory.total_bytes, "measured_peak_bytes": measured,
            "arena": engine.arena}


def _report(path: Path, engine: Engine, feeds: dict[str, Any], t: Timings, warmup: int) -> dict[str, Any]:
    batch = batch_size(feeds, engine)
    per_second = len(t.latency) / t.wall_seconds
    return {
        "engine": str(path),
        "device": str(engine.device),
        "shapes": {k: list(v.shape) for k, v in feeds.items()},
        "batch": batch,
        "warmup": warmup,
        "iterations": len(t.latency),
        "seconds": t.wall_seconds,
        "cuda_graph": engine.cuda_graph_status,
        "throughput": {"inferences_per_second": per_second, "samples_per_second": per_second * batch},
        "latency_ms": stats(t.latency),
        "h2d_ms": stats(t.h2d),
        "gpu_compute_ms": stats(t.compute),
        "d2h_ms": stats(t.d2h),
    }


def _print(r: dict[str, Any]) -> None:
    out = output.stdout()
    shapes = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in r["shapes"].items())
    out.print(f"{r['engine']} on {r['device']}; shapes {shapes}; {r['iterations']} iterations in "
              f"{r['seconds']:.4g} s after {r['warmup']} warm-up; CUDA graph: {r['cuda_graph']}", markup=False)
    out.print(f"throughput: {r['throughput']['inferences_per_second']:.2f} inferences/s, "
              f"{r['throughput']['samples_per_second']:.2f} samples/s (batch {r['batch']})", markup=False)
    cols = ["min", "mean", "median", "p90", "p95", "p99", "max"]
    rows = [[label] + [f"{r[key][c]:.3f}" for c in cols]
            for label, key in (("latency (end to end)", "latency_ms"), ("H2D", "h2d_ms"),
                               ("GPU compute", "gpu_compute_ms"), ("D2H", "d2h_ms")) if r[key]]
    out.print(output.table("milliseconds", ["", *cols], rows, right=cols))
    m = r["memory"]
    measured = m["measured_peak_bytes"]
    out.print(output.key_values("memory", [
        ("weights", output.fmt_bytes(m["weights_bytes"])),
        ("activations (plan, opt shapes)", f"{output.fmt_bytes(m['planned_activation_bytes'])} "
                                           f"(all of them, none reused: {output.fmt_bytes(m['total_activation_bytes'])})"),
        *([("measured peak above start", output.fmt_bytes(measured))] if measured is not None else []),
        *([("CUDA-graph arena", f"{output.fmt_bytes(m['arena']['reserved_bytes'])} held for a planned "
                                f"{output.fmt_bytes(m['arena']['planned_bytes'])}")] if m.get("arena") else []),
    ]))


def _print_layers(p: dict[str, Any]) -> None:
    out = output.stdout()
    cols = ["ms", "%", "host ms"]
    rows = [[str(r["index"]), r["name"], r["op"], r["tactic"], f"{r['ms']:.4f}", f"{r['percent']:.1f}",
             f"{r['host_ms']:.4f}"] for r in p["steps"]]
    rows.append(["", "total", "", "", f"{p['total_ms']:.4f}", "100.0", ""])
    title = (f"per-layer times ({p['timer']}, eager run without CUDA graph, average of "
             f"{p['iterations']} runs), slowest first")
    out.print(output.table(title, ["#", "layer", "op", "tactic", *cols], rows, right=["#", *cols]))

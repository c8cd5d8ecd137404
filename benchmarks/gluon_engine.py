"""GPU: whole engines with and without the Gluon tactics (kernels/gluon), and where a CUDA graph
replay's time goes between kernels.

    PYTHONPATH=src python benchmarks/gluon_engine.py resnet50:64:fp8 [resnet50:64:int8 ...]

Each argument is model:batch:precision as benchmarks/profile_steps.py takes it (its build and
calibration, timing cache /tmp/tc.json). Two engines per argument from one process: the default
build (the tuner times the Gluon tactics beside the Triton ones), and a build with every Gluon
tactic taken out of the registry (the same timing cache, so the layers the Gluon kernels did not
win keep their kernels). Each is saved and loaded twice, alternately, and timed as pdl_engine.py
times engines (budget_plan.graph_ms: CUDA graph replays, 5 x 20 runs, median), with its graph
status (a plan the graph cannot capture runs step by step) and its agreement with the other
engine's output (different kernels: cosine and largest difference, not bit equality).

Then one graph replay of each under torch.profiler: the kernels' summed GPU time against the
replay's span from the first kernel's start to the last one's end, and the idle time between
consecutive kernels, split by the kind of the kernel after the gap (Gluon, other Triton, other)
with the largest gaps named. The question it answers (H200, 2026-11-29): ResNet-50 b64 fp8's
kernels summed to 1087 us in an eager profile, its graph replay took 1209 us in the suite; the
engines before the Gluon tactic had ~30 us between the two. With PDL on the Gluon kernel (H200,
2026-11-29, 14:41) the replay took 1.108 ms with 7.3 us idle between its kernels; int8 with the
Gluon conv for every stride-1 conv (aade6c1): 1.201 ms against 1.316 without, outputs bit-equal.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Iterator

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from benchmarks.budget_plan import graph_ms  # noqa: E402
from benchmarks.profile_steps import build  # noqa: E402
from kiln.tactics import registry  # noqa: E402


@contextlib.contextmanager
def without_gluon() -> Iterator[list[str]]:
    """The registry without its Gluon tactics (their kernels are kernels/gluon's) while inside."""
    registry._ensure_loaded()                      # every tactic module registered, as other benchmarks do
    taken = {n: t for n, t in registry.TACTICS.items() if t.kernel.__module__.startswith("kiln.kernels.gluon")}
    for name in taken:
        del registry.TACTICS[name]
    try:
        yield sorted(taken)
    finally:
        registry.TACTICS.update(taken)


def kernel_trace(engine: kiln.Engine, feeds: dict[str, torch.Tensor]) -> list[tuple[str, float, float]]:
    """(name, start us, duration us) of every GPU kernel of one graph replay, in start order."""
    for _ in range(3):
        engine.run_tensors(feeds, validate=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.run_tensors(feeds, validate=False)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path))["traceEvents"]
    kernels = [(e["name"], float(e["ts"]), float(e["dur"])) for e in events if e.get("cat") == "kernel"]
    return sorted(kernels, key=lambda k: k[1])


def kind(name: str) -> str:
    if name.split("(")[0] == "conv_kernel":    # the Gluon kernel (not the Triton _qconv_kernel)
        return "gluon"
    if name.startswith(("void", "at::", "cudnn", "sm90", "cutlass", "nvjet")) or "::" in name:
        return "library"
    return "triton"


def report_gaps(label: str, kernels: list[tuple[str, float, float]]) -> None:
    busy = sum(d for _, _, d in kernels)
    span = kernels[-1][1] + kernels[-1][2] - kernels[0][1]
    gaps: dict[str, list[float]] = {"gluon": [], "triton": [], "library": []}
    named = []
    end = kernels[0][1]
    for name, ts, dur in kernels:
        gap = ts - end
        gaps[kind(name)].append(gap)
        named.append((gap, name))
        end = max(end, ts + dur)
    print(f"  {label}: {len(kernels)} kernels, busy {busy:.1f} us, span {span:.1f} us, idle {span - busy:.1f} us")
    for k, g in gaps.items():
        if g:
            print(f"    before a {k:7s} kernel: {len(g):3d} gaps, sum {sum(g):7.1f} us, median {median(g):5.2f}, "
                  f"max {max(g):5.2f}")
    for gap, name in sorted(named, reverse=True)[:8]:
        print(f"    {gap:6.2f} us before {name[:90]}")


def agreement(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    parts = []
    for k in a:
        x, y = a[k].double().flatten(), b[k].double().flatten()
        cos = float(torch.nn.functional.cosine_similarity(x, y, dim=0))
        parts.append(f"{k} cosine {cos:.6f}, max diff {float((x - y).abs().max()):.3g}")
    return "; ".join(parts)


def main(specs: list[str]) -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for spec in specs:
        name, batch, precision = spec.split(":")
        paths = {}
        engine, feeds = build(name, int(batch), precision)
        gluon_layers = sum(1 for st in engine.plan.steps if "gluon" in st.tactic)
        paths["gluon"] = Path(tempfile.mkdtemp(prefix="kiln-gluon-")) / "engine.kiln"
        engine.save(paths["gluon"])
        del engine
        with without_gluon() as taken:
            engine, _ = build(name, int(batch), precision)
        paths["triton"] = Path(tempfile.mkdtemp(prefix="kiln-triton-")) / "engine.kiln"
        engine.save(paths["triton"])
        del engine
        print(f"{spec}: {gluon_layers} steps on Gluon tactics in the default build; the other without {taken}",
              flush=True)
        times: dict[str, list[float]] = {"gluon": [], "triton": []}
        outs = {}
        for which in ("triton", "gluon", "triton", "gluon"):
            loaded = kiln.load(paths[which], device="cuda")
            outs[which] = {k: v.float().clone() for k, v in loaded.run_tensors(feeds, validate=False).items()}
            ms = graph_ms(loaded, feeds)
            times[which].append(ms)
            print(f"  {which:6s}: {ms:.4f} ms ({loaded.cuda_graph_status})", flush=True)
            if len(times[which]) == 2:
                report_gaps(which, kernel_trace(loaded, feeds))
            del loaded
            torch.cuda.empty_cache()
        t, g = median(times["triton"]), median(times["gluon"])
        print(f"{spec}: without Gluon {t:.4f} ms, with {g:.4f} ms ({t / g:.3f}x); outputs: "
              f"{agreement(outs['gluon'], outs['triton'])}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50:64:fp8"])

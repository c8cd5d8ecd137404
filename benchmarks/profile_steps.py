"""GPU kernel time per plan step: every kernel an engine launches, attributed to the step that launched it.

    PYTHONPATH=src python benchmarks/profile_steps.py resnet50:64:fp16 [bert:32:fp8 ...]

Each argument is model:batch:precision (fp16, bf16, fp32, tf32, int8, fp8; int8/fp8 with fp16 float
layers, calibrated on 4 batches of the benchmark's random inputs; int8-tensor / fp8-tensor: with
per-tensor weight scales, --weight-scales tensor; a -real suffix (fp8-tensor-real): calibrated on 64
real samples (benchmarks/samples.py: sentences, structured images) as the suite calibrates; a -qa
suffix before it (fp8-tensor-qa, int8-qa-real): 8-bit Q, K and V, --quantize-attention;
qdq-QUInt8 / qdq-QInt8: the model
quantized by ONNX Runtime's quantize_static as benchmarks/qdq_ort.py does with --calib-samples 32,
the same model, so that its timing cache, /tmp/tc.json, serves both; built with fp16 float layers;
dynamic: its quantize_dynamic model, qdq_ort.py --dynamic's).
One eager run (no CUDA graph) under torch.profiler, each step inside a record_function range; a
kernel belongs to the step whose
range holds the launch call correlated with it in the profiler's trace. Prints, per step in plan
order, its kernels and their GPU microseconds, then the total. The view `kiln bench --profile-layers`
cannot give: which kernels a step is made of (a layout copy, a separate bias add).
"""
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import models  # noqa: E402
import kiln  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402

LAUNCHES = ("cuda_runtime", "cuda_driver")


def build(name: str, batch: int, precision: str) -> tuple[kiln.Engine, dict[str, torch.Tensor]]:
    m = getattr(models, name)(0)
    path = models.export_onnx(m, Path("/tmp/bench"))
    if precision.startswith("qdq-"):   # the model quantized by ONNX Runtime (qdq_ort.py), built --fp16
        from benchmarks import samples
        from benchmarks.qdq_ort import ort_qdq
        feeds = samples.calibration_feeds(m, 32, batch, 0)
        path, precision = ort_qdq(path, feeds, precision[4:], Path(tempfile.mkdtemp(prefix="kiln-qdq-"))), "fp16"
    elif precision == "dynamic":     # quantize_dynamic's model (qdq_ort.py --dynamic), built --fp16
        from benchmarks.qdq_ort import ort_dynamic
        path, precision = ort_dynamic(path, Path(tempfile.mkdtemp(prefix="kiln-dyn-"))), "fp16"
    real = precision.endswith("-real")
    precision = precision.removesuffix("-real")
    attention = precision.endswith("-qa")           # 8-bit Q, K and V (--quantize-attention)
    precision = precision.removesuffix("-qa")
    scales = "tensor" if precision.endswith("-tensor") else "channel"
    precision = precision.removesuffix("-tensor")
    quantized = precision in ("int8", "fp8")
    calibration = None
    if quantized and real:     # the suite's calibration: 64 of benchmarks/samples.py's samples
        from benchmarks import samples
        calibration = samples.calibration_feeds(m, 64, batch, 0)
    elif quantized:
        calibration = [{k: v.numpy() for k, v in models.make_inputs(m, batch, seed=s).items()} for s in range(1, 5)]
    config = BuildConfig(precision=precision, device="cuda", timing_cache="/tmp/tc.json",
                         float_precision="fp16" if quantized else "fp32", weight_scales=scales,
                         quantize_attention=attention,
                         profiles=(Profile.from_ranges(models.profile_ranges(m, [batch])),))
    engine = kiln.build(str(path), config, calibration=calibration)
    return engine, {k: v.cuda() for k, v in models.make_inputs(m, batch).items()}


def per_step(engine: kiln.Engine, feeds: dict[str, torch.Tensor]) -> dict[int, list[tuple[str, float]]]:
    kernels = engine.executor._kernels
    original = list(kernels)
    for k, fn in enumerate(original):
        def ranged(*a, _fn=fn, _k=k, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            with record_function(f"STEP{_k}"):
                return _fn(*a, **kw)
        kernels[k] = ranged
    engine.use_cuda_graphs = False
    try:
        for _ in range(3):
            engine.run_tensors(feeds, validate=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            engine.run_tensors(feeds, validate=False)
            torch.cuda.synchronize()
    finally:
        kernels[:] = original
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        events = json.load(open(trace))["traceEvents"]
    ranges = [(e["ts"], e["ts"] + e["dur"], int(e["name"][4:])) for e in events
              if e.get("cat") == "user_annotation" and e.get("name", "").startswith("STEP")]
    launched = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in LAUNCHES and "correlation" in e.get("args", {})}
    steps: dict[int, list[tuple[str, float]]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"):
            at = launched.get(e.get("args", {}).get("correlation"))
            step = next((k for lo, hi, k in ranges if at is not None and lo <= at <= hi), -1)
            steps[step].append((e["name"], float(e["dur"])))
    return steps


def main(specs: list[str]) -> None:
    for spec in specs:
        name, batch, precision = spec.split(":")
        engine, feeds = build(name, int(batch), precision)
        steps = per_step(engine, feeds)
        print(f"== {name} b{batch} {precision}: GPU us per step (step -1: kernels no step's range holds)")
        for k in sorted(steps):
            st = engine.plan.steps[k] if k >= 0 else None
            label = f"{st.op:18s} {st.tactic:32s} {st.config}" if st else "?"
            if st is not None and st.op == "kiln::Pointwise":   # which program: its ops
                label += " [" + " ".join(ins[0] for ins in st.attrs.get("program", ())) + "]"
            us = sum(d for _, d in steps[k])
            print(f"{k:4d} {us:8.1f}  {label} | " + "; ".join(f"{n[:60]} {d:.1f}" for n, d in steps[k]), flush=True)
        print(f"total {sum(d for ks in steps.values() for _, d in ks):.1f} us")
        del engine
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50:64:fp16"])

"""A dynamic-batch engine against a fixed-batch one: graph-replay time and GPU time per op and tactic.

    PYTHONPATH=src python benchmarks/dynamic_profile.py [--model minilm] [--batch 32] [--min-batch 1]
                                                        [--precisions fp16,fp8] [--min-seq N]

Builds the model (benchmarks/models.py, its seed-0 weights) twice per precision: with a profile
of batch `--batch` only, and with one of batches `--min-batch` to `--batch` (opt = max = `--batch`,
as the suite builds), and times both at `--batch` on the same inputs: CUDA graph replays
(budget_plan.graph_ms: median of 5 x 20), then one eager run under torch.profiler with each
step's kernels summed by op and tactic (profile_steps.per_step). fp8/int8 with fp16 float layers,
per-tensor weight scales, calibrated on 64 of the benchmark's samples. The two engines should
run the same kernels at the same speed: a dynamic batch is only a symbol in the shapes.
--min-seq N (a token model exported here, e.g. bert_base): the dynamic engine is built from an
export whose sequence is dynamic too, its profile covering sequences N to the model's, and timed
at the model's sequence (the profile's largest) as the fixed one is.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from benchmarks import models, samples  # noqa: E402
from benchmarks.budget_plan import graph_ms  # noqa: E402
from benchmarks.profile_steps import per_step  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm", choices=sorted(models.MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--precisions", default="fp16,fp8")
    ap.add_argument("--top", type=int, default=14, help="ops listed per engine")
    ap.add_argument("--min-seq", type=int, default=0, help="also a dynamic sequence from N (token models)")
    args = ap.parse_args()
    model = models.MODELS[args.model](0)
    fixed_path = models.export_onnx(model, Path("/tmp/bench"))
    dynamic_path = models.export_onnx(model, Path("/tmp/bench"), dynamic_seq=True) if args.min_seq else fixed_path
    feeds = {k: v.cuda() for k, v in models.make_inputs(model, args.batch).items()}
    calibration = samples.calibration_feeds(model, 64, args.batch, 0)
    for precision in args.precisions.split(","):
        for batches in ([args.batch], [args.min_batch, args.batch]):
            ranges = models.profile_ranges(model, batches)
            path = fixed_path
            if len(batches) > 1 and args.min_seq:
                path = dynamic_path
                ranges = {n: ((lo[0], args.min_seq, *lo[2:]), opt, hi) for n, (lo, opt, hi) in ranges.items()}
            config = BuildConfig(precision=precision, device="cuda", timing_cache="/tmp/dynamic_profile_tc.json",
                                 profiles=(Profile.from_ranges(ranges),))
            quantized = precision in ("int8", "fp8")
            if quantized:
                config = replace(config, float_precision="fp16", weight_scales="tensor")
            t0 = time.time()
            engine = kiln.build(str(path), config, calibration=calibration if quantized else None)
            ms = graph_ms(engine, feeds)
            by_kind: dict[str, float] = collections.defaultdict(float)
            count: collections.Counter[str] = collections.Counter()
            for k, kernels in per_step(engine, feeds).items():
                step = engine.plan.steps[k] if k >= 0 else None
                key = f"{step.op} {step.tactic}" if step else "?"
                by_kind[key] += sum(d for _, d in kernels)
                count[key] += 1
            seq = f", sequence {args.min_seq}-{model.item_shape[0]}" if path is not fixed_path else ""
            print(f"== {args.model} {precision}, profile batch {'-'.join(map(str, batches))}{seq}: replay {ms:.4f} ms at "
                  f"b{args.batch}; build {time.time() - t0:.0f} s; eager GPU sum {sum(by_kind.values()):.1f} us",
                  flush=True)
            for key, us in sorted(by_kind.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"   {us:8.1f} us  x{count[key]:3d}  {key}")
            del engine
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

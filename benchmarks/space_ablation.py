"""Engines built with and without part of the 8-bit GEMM tuning space, timed whole.

    rm -f /tmp/tc.json; PYTHONPATH=src python benchmarks/space_ablation.py minilm:32:fp16 bert:32:fp8-tensor
    rm -f /tmp/tc.json; PYTHONPATH=src python benchmarks/space_ablation.py --drop SM_PROGRAMS bert:32:fp8-tensor

Each argument is model:batch:precision as benchmarks/profile_steps.py takes it (its build: fp16
float layers, calibrated on 4 batches of the benchmark's random inputs, or with a -real suffix on
64 real samples as the suite calibrates, timing cache
/tmp/tc.json, which the commands above empty first so that no timing of the other space is
reused). --drop KEY[,KEY...] leaves out of the space every config of kiln::QMatMul's Triton
tactics (kernels/triton/qgemm_space.py) that sets one of those keys, before the tactics are
registered: what a tiling or option is worth inside the engine, where a kernel's isolated time
(the tuner's, benchmarks/kernels_overlap.py's) can mislead. Prints each engine's time (CUDA
graph replays, benchmarks/budget_plan.graph_ms) and the config of each Triton 8-bit GEMM step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.kernels.triton import qgemm_space  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="+", help="model:batch:precision")
    ap.add_argument("--drop", default="", help="config keys whose configs leave the 8-bit GEMM spaces")
    args = ap.parse_args()
    drop = {k for k in args.drop.split(",") if k}
    if drop:   # before kiln.tactics registers the spaces (benchmarks below import kiln)
        qgemm_space.FP8_CONFIGS = tuple(c for c in qgemm_space.FP8_CONFIGS if not drop & set(c))
        qgemm_space.INT8_CONFIGS = tuple(c for c in qgemm_space.INT8_CONFIGS if not drop & set(c))
    from benchmarks.budget_plan import graph_ms
    from benchmarks.profile_steps import build
    label = f"without {','.join(sorted(drop))}" if drop else "whole space"
    for spec in args.specs:
        name, batch, precision = spec.split(":")
        t0 = time.time()
        engine, feeds = build(name, int(batch), precision)
        ms = graph_ms(engine, feeds)
        print(f"{label}: {spec} {ms:.4f} ms (build and timing {time.time() - t0:.0f} s)", flush=True)
        for step in engine.plan.steps:
            if step.tactic in ("kiln::QMatMul.triton", "kiln::QMatMul.triton_fp8"):
                print(f"  {step.name:16s} {step.tactic:26s} {qgemm_space.describe(step.config)}", flush=True)


if __name__ == "__main__":
    main()

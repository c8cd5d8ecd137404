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
graph replays, benchmarks/budget_plan.graph_ms), its outputs' cosine per row to PyTorch fp32 on the
timing inputs (min and mean), how many of its attentions read 8-bit Q, K and V, and the config of
each Triton 8-bit GEMM step.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.accuracy_metrics import row_cosines  # noqa: E402
from kiln.kernels.triton import qgemm_space  # noqa: E402


def outputs(name: str, engine, feeds: dict) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(the engine's output, PyTorch fp32's) on `feeds`, as float32 arrays."""
    from benchmarks import models
    m = getattr(models, name)(0)     # profile_steps.build's model: the same seeded weights
    with torch.no_grad():
        want = m.module.float().to(feeds[m.input_names[0]].device)(*[feeds[n] for n in m.input_names])
    got = engine.run_tensors(feeds, validate=False)[m.output_name]
    return got.float().cpu().numpy(), want.float().cpu().numpy()


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
    from kiln.kernels.reference.fused import ATTENTION_CODE_SCALES
    code_scale = ATTENTION_CODE_SCALES[0]   # set where Q, K and V are 8-bit codes
    label = f"without {','.join(sorted(drop))}" if drop else "whole space"
    for spec in args.specs:
        name, batch, precision = spec.split(":")
        t0 = time.time()
        engine, feeds = build(name, int(batch), precision)
        ms = graph_ms(engine, feeds)
        cos = row_cosines(*outputs(name, engine, feeds))
        attentions = [s for s in engine.plan.steps if s.op == "kiln::Attention"]
        coded = sum(1 for s in attentions if len(s.inputs) > code_scale and s.inputs[code_scale] is not None)
        print(f"{label}: {spec} {ms:.4f} ms (build and timing {time.time() - t0:.0f} s); cosine to PyTorch fp32 "
              f"min {cos.min():.5f} mean {cos.mean():.5f}; {coded} of {len(attentions)} attention(s) read 8-bit "
              "Q, K and V", flush=True)
        for step in engine.plan.steps:
            if step.tactic in ("kiln::QMatMul.triton", "kiln::QMatMul.triton_fp8"):
                print(f"  {step.name:16s} {step.tactic:26s} {qgemm_space.describe(step.config)}", flush=True)


if __name__ == "__main__":
    main()

"""An --accuracy-budget plan against kiln fp16 and the all-quantized engine, timed in one process.

    PYTHONPATH=src python benchmarks/budget_plan.py [--precision fp8|int8] [--batches 256,32] [--keep LAYER,LAYER,...]
                                                    [--steps] [--weight-scales channel|tensor]
                                                    [--smooth-quant 0.9|none] [--weight-rounding nearest|gptq]
                                                    [--calib-samples 64] [--eval-samples 0] [--budget-batches 3]
                                                    [--budget cosine=0.999]
    PYTHONPATH=src python benchmarks/budget_plan.py --precision int8 --search-device cpu   # the search alone

all-MiniLM-L6-v2 (its packaged weights), fp8 (or int8) with fp16 float layers and SmoothQuant 0.9
(--smooth-quant none: off), weights rounded to nearest (--weight-rounding gptq: GPTQ), budget
cosine=0.999 (--budget: another, e.g. a stricter one for a margin; --eval-samples scores against
0.999 either way). The search (compiler/accuracy_budget.search: untuned builds) runs once at batch 32
on --calib-samples calibration sentences (64: two batches, both measured on; the budget is measured
on the first --budget-batches of them, and with GPTQ and more batches than that, the search's
builds calibrate on the others),
unless --keep names the layers to keep in fp16 (a plan found before: the search prints it);
--search-device cpu runs it on the CPU (the reference kernels) and stops there. --eval-samples N
also measures the budget's metric (the cosine of the flattened outputs) of each engine on N
evaluation sentences no build calibrated on, against PyTorch fp32. Then, per batch: tuned builds
of the fp16 engine, the all-quantized engine and the plan (the same config plus one fp16 rule per kept layer), each timed as CUDA
graph replays (median of 5 x 20, after one run), on the same inputs, each engine's embeddings
first compared with PyTorch fp32's (per-sentence cosine, min and mean); --steps adds the plan's GPU
time per step (benchmarks/profile_steps.py). Prints each time and the plan's and the
all-quantized engine's speedups over fp16. What the suite's budget row does in one build
(plan_speed), here in pieces, so that a plan can be re-timed without its search.
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
from benchmarks.accuracy_metrics import row_cosines  # noqa: E402
from benchmarks.profile_steps import per_step  # noqa: E402
from kiln.compiler.accuracy_budget import parse_budget, search  # noqa: E402
from kiln.compiler.timer import median  # noqa: E402
from kiln.config import BUDGET_BATCHES, BuildConfig, Profile  # noqa: E402

BUDGET = "cosine=0.999"
TARGET = 0.999   # issue 5's: the plan's cosine on sentences no build saw
SEARCH_BATCH = 32


def quant_config(model: models.BenchModel, batch: int, precision: str, keep: tuple[str, ...] = (),
                 weight_scales: str = "channel", device: str = "cuda", smooth_quant: float | None = 0.9,
                 weight_rounding: str = "nearest", budget_batches: int = BUDGET_BATCHES) -> BuildConfig:
    return BuildConfig(precision=precision, device=device,
                       profiles=(Profile.from_ranges(models.profile_ranges(model, [batch])),),
                       timing_cache=f"/tmp/kiln-budget-plan-{batch}.json", float_precision="fp16",
                       smooth_quant=smooth_quant, layer_precision=tuple((name, "fp16") for name in keep),
                       weight_scales=weight_scales, weight_rounding=weight_rounding, budget_batches=budget_batches)


def graph_ms(engine: kiln.Engine, feeds: dict[str, torch.Tensor]) -> float:
    engine.run_tensors(feeds, validate=False)   # the CUDA graph is captured here
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            engine.run_tensors(feeds, validate=False)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 20)
    return median(times)


def held_out_batches(model: models.BenchModel, count: int, batch: int) -> list[dict[str, torch.Tensor]]:
    """`count` evaluation sentences (a split no calibration draws from) in whole batches, on the GPU."""
    if count <= 0:
        return []
    data = samples.make(model, -(-count // batch) * batch, 0, "evaluation")
    total = len(next(iter(data.values())))
    return [{k: v[i:i + batch].cuda() for k, v in data.items()} for i in range(0, total, batch)]


def torch_outputs(model: models.BenchModel, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """PyTorch fp32's outputs on `batches`, flattened and joined (float64)."""
    module = model.module.float().cuda()
    with torch.no_grad():
        return torch.cat([module(*[f[n] for n in model.input_names]).double().flatten() for f in batches])


def flat_cosine(engine: kiln.Engine, model: models.BenchModel, batches: list[dict[str, torch.Tensor]],
                want: torch.Tensor) -> float:
    """The budget's metric on `batches`: the cosine of all outputs flattened, against `want`
    (torch_outputs on the same batches)."""
    got = torch.cat([engine.run_tensors(f, validate=False)[model.output_name].double().flatten() for f in batches])
    return float(got @ want / (got.norm() * want.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="256,32")
    ap.add_argument("--keep", default="", help="layers to keep in fp16 (skips the search)")
    ap.add_argument("--steps", action="store_true", help="the plan's GPU time per step")
    ap.add_argument("--weight-scales", choices=("channel", "tensor"), default="channel",
                    help="weight scales per output channel or per tensor (kiln build --weight-scales)")
    ap.add_argument("--precision", choices=("fp8", "int8"), default="fp8")
    ap.add_argument("--search-device", choices=("cuda", "cpu"), default="cuda",
                    help="where the search builds run; cpu: the search alone, then stop")
    ap.add_argument("--smooth-quant", default="0.9", help="SmoothQuant alpha, or none")
    ap.add_argument("--weight-rounding", choices=("nearest", "gptq"), default="nearest")
    ap.add_argument("--calib-samples", type=int, default=64, help="calibration sentences")
    ap.add_argument("--eval-samples", type=int, default=0, help="held-out sentences for the budget's metric")
    ap.add_argument("--budget", default=BUDGET, help="the search's budget; a stricter one than the target "
                    "leaves a margin for other inputs (the held-out sentences are still scored against 0.999)")
    ap.add_argument("--budget-batches", type=int, default=BUDGET_BATCHES,
                    help="calibration batches the search measures the budget on (kiln build --budget-batches)")
    args = ap.parse_args()
    budget = parse_budget(args.budget)
    options = {"weight_scales": args.weight_scales, "weight_rounding": args.weight_rounding,
               "smooth_quant": None if args.smooth_quant == "none" else float(args.smooth_quant)}
    t0 = time.time()
    say = lambda msg: print(f"[{time.time() - t0:5.0f} s] {msg}", flush=True)  # noqa: E731
    model = models.minilm(0)
    path = models.export_onnx(model, Path("/tmp/bench"))
    keep = tuple(n for n in args.keep.split(",") if n)
    if not keep:
        found = search(str(path), quant_config(model, SEARCH_BATCH, args.precision, device=args.search_device,
                                               budget_batches=args.budget_batches, **options), budget,
                       calibration=samples.calibration_feeds(model, args.calib_samples, SEARCH_BATCH, 0), progress=say)
        keep = tuple(k.name for k in found.kept)
        say(f"search ({args.precision}, {args.search_device}): {found.builds} builds, {budget[0]}={found.achieved:.6f} "
            f"(none kept: {found.reduced:.6f}), keep {len(keep)} of {found.candidates}: {','.join(keep)}")
        if args.search_device == "cpu":
            return
    for batch in (int(b) for b in args.batches.split(",")):
        calibration = samples.calibration_feeds(model, args.calib_samples, batch, 0)
        held_out = held_out_batches(model, args.eval_samples, batch)
        held_out_want = torch_outputs(model, held_out) if held_out else None
        feeds = {k: v.cuda() for k, v in models.make_inputs(model, batch).items()}
        with torch.no_grad():
            reference = model.module.float().cuda()(*[feeds[n] for n in model.input_names]).float().cpu().numpy()
        quant = quant_config(model, batch, args.precision, **options)
        times = {}
        fp16 = replace(quant, precision="fp16", float_precision="fp32", smooth_quant=None, weight_scales="channel",
                       weight_rounding="nearest")
        for label, config in (("fp16", fp16), (args.precision, quant),
                              ("plan", quant_config(model, batch, args.precision, keep, **options))):
            engine = kiln.build(str(path), config, calibration=calibration if config.precision != "fp16" else None)
            out = engine.run_tensors(feeds, validate=False)[model.output_name].float().cpu().numpy()
            cos = row_cosines(out, reference)
            times[label] = graph_ms(engine, feeds)
            kinds = collections.Counter(s.tactic for s in engine.plan.steps if s.op.startswith(("kiln::Q", "kiln::MatMulQ")))
            say(f"b{batch} {label}: {times[label]:.4f} ms; cosine to PyTorch fp32 min {cos.min():.5f} mean "
                f"{cos.mean():.5f}; {dict(kinds)}")
            if held_out:
                say(f"b{batch} {label}: cosine on {args.eval_samples} held-out sentences "
                    f"{flat_cosine(engine, model, held_out, held_out_want):.6f} (target {TARGET})")
            if label == "plan" and args.steps:
                for k, kernels in sorted(per_step(engine, feeds).items()):
                    step = engine.plan.steps[k] if k >= 0 else None
                    what = f"{step.op:22s} {step.tactic:34s} {step.name[:30]}" if step else "?"
                    print(f"{k:4d} {sum(d for _, d in kernels):8.1f} us  {what}")
            del engine
            torch.cuda.empty_cache()
        say(f"b{batch}: plan {times['fp16'] / times['plan']:.3f}x kiln fp16, all-{args.precision} "
            f"{times['fp16'] / times[args.precision]:.3f}x")


if __name__ == "__main__":
    main()

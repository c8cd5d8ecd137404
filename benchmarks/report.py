"""The suite's results as markdown: a header per run, tables per model.

Results are plain dicts (the JSON the suite writes):
  {"meta": {...}, "peak_tflops": {precision: x}, "models": [
     {"name", "source", "onnx", "export_s", "batches", "error"?, "samples": {"data", "evaluation"},
      "calibration": {"method", "samples", "seconds", "data", ...} | {"error"},
      "builds": {precision: {"build_s", "warm_build_s"?, "warm": {...}, "tuning", "same_kernels"?,
                             "accuracy": {...}, "quantized_layers"?, ...} | {"error"}},
      "rows": [float row | quantized row]}]}
A float row: {"precision", "batch", "status", "flops", "kiln": {...}|None, "peers": {name: {...}},
"best_peer", "kiln_vs_best", "best_compile", "kiln_vs_best_compile"}. A contender's entry: {"ms",
"items_per_s", "iterations", "check": {...}, "tflops", "peak_fraction", "first_call_s" (peers)} or
{"skipped": reason} or {"error": text}. A quantized row (benchmarks/quantized.py): {"precision",
"batch", "status", "kiln", "accuracy", "check", "baseline", "vs_kiln_fp16", "vs_best_compile_fp16"}.
"""
from __future__ import annotations

from typing import Any

WEIGHTS_NOTE = ("Weights: random initialisation (seeded), not trained: these are speed figures; "
                "every contender runs the same weights and inputs.")
QUANTIZED = ("int8", "fp8")  # = measure.QUANTIZED (report.py imports no torch)


def _ms(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    if "skipped" in entry:
        return "skipped"
    if "error" in entry:
        return "error"
    return f"{entry['ms']:.3f}"


def _pct(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("peak_fraction") is None:
        return "—"
    return f"{100 * entry['peak_fraction']:.1f}%"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "—"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cols: list[str]) -> list[str]:
    return [_row(cols), "|" + "---|" * len(cols)]


def header(meta: dict[str, Any], peak: dict[str, float]) -> str:
    peaks = ", ".join(f"{p} {v:.0f} TFLOP/s" for p, v in peak.items())
    lines = [
        f"## kiln benchmark suite — {meta['card']}, {meta['date']}",
        "",
        f"Command: `{meta['command']}`",
        f"torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, "
        f"timm {meta['timm']}, kiln {meta['kiln']}; TF32 off (fp32 is IEEE fp32 for every contender), "
        "but in tf32 rows, where kiln and the peers alike use TF32 tensor cores.",
        f"Timing: median of up to {meta['iters']} runs ({meta['timer']}), inputs already on the device; "
        "kiln with CUDA graphs (its default); torch.compile peers specialised per batch, timed after "
        "their first call.",
        f"Matmul peak ({meta['peak_n']}³ torch.mm, measured in this run): {peaks or '—'}. "
        "`% peak` = model FLOPs (torch FlopCounterMode) / time / that peak.",
        WEIGHTS_NOTE,
    ]
    if meta.get("warm_build"):
        warm = ("off" if meta["warm_build"] == "off" else
                f"the same build again reading the cache the cold one wrote, {meta['warm_build']}")
        lines.append(f"kiln build times: cold = from an empty timing cache (timing cache: {meta['timing_cache']}); "
                     f"warm = {warm}.")
    if meta.get("precision_note"):
        lines.append(f"Note: {meta['precision_note']}.")
    return "\n".join(lines)


def builds_table(model: dict[str, Any]) -> list[str]:
    """Per precision: cold and warm build time, what the tuner did in each, and the engine's accuracy
    on the evaluation samples."""
    lines = [f"kiln builds (ONNX export {model['export_s']:.1f} s):", ""]
    lines += _head(["precision", "cold build s", "warm build s", "cold: layers timed / timer calls",
                    "warm: cache hits / timer calls", "same kernels", "eval cosine min", "eval cosine mean",
                    "eval top-1", "kernels"])
    for p, b in model["builds"].items():
        if "error" in b:
            lines.append(_row([p, f"FAILED ({b['error']})", *["—"] * 8]))
            continue
        warm, cold, acc = b.get("warm", {}), b.get("tuning", {}), b.get("accuracy") or {}
        wt = warm.get("tuning", {})
        warm_s = f"{b['warm_build_s']:.1f}" if "warm_build_s" in b else \
            ("error" if "error" in warm else "—")
        kinds = ", ".join(f"{k} {n}" for k, n in b.get("tactic_kinds", {}).items())
        if "quantized_layers" in b:
            run_by = ", ".join(f"{t} {n}" for t, n in b.get("quantized_kinds", {}).items())
            kinds += (f"; {b['quantized_layers']} layers quantized ({run_by or '—'}), "
                      f"{b['kept_float_layers']} kept float")
        if "budget" in b:
            g = b["budget"]
            kinds += (f"; accuracy budget {g['metric']}={g['target']}: {g['kept']} of {g['candidates']} layers kept in "
                      f"{g['kept_precision']} ({g['metric']} {g['achieved']} on the calibration batches, "
                      f"{g['builds']} builds"
                      + (f"; the build timed it at {sp['speedup']:.2f}x the {sp['wider_precision']} engine"
                         if (sp := g.get("speed")) else "") + ")")
        lines.append(_row([
            p, f"{b['build_s']:.1f}", warm_s,
            cold.get("off") or f"{cold.get('layers_timed', '—')} / {cold.get('timer_calls', '—')}",
            wt.get("off") or (f"{wt['cache_hits']} / {wt['timer_calls']}" if "cache_hits" in wt else "—"),
            {True: "yes", False: "NO"}.get(b.get("same_kernels"), "—"),
            _num(acc.get("cosine_min"), ".6f"), _num(acc.get("cosine_mean"), ".6f"),
            _top1(acc), kinds]))
    return lines + [""]


def float_table(model: dict[str, Any], peers: list[str]) -> list[str]:
    rows = [r for r in model["rows"] if r["precision"] not in QUANTIZED]
    if not rows:
        return []
    cols = ["precision", "batch", "status", "kiln ms", "kiln items/s", *[f"{p} ms" for p in peers],
            "best peer", "kiln vs best", "kiln vs best compile", "kiln % peak", "best % peak", "kiln cosine",
            "kiln max abs err"]
    lines = _head(cols)
    for r in rows:
        k = r.get("kiln")
        best = r["peers"].get(r["best_peer"]) if r.get("best_peer") else None
        chk = (k or {}).get("check") or r.get("check")
        lines.append(_row([
            r["precision"], str(r["batch"]), r["status"], _ms(k),
            f"{k['items_per_s']:.0f}" if k and "items_per_s" in k else "—",
            *[_ms(r["peers"].get(p)) for p in peers],
            r.get("best_peer") or "—", _x(r.get("kiln_vs_best")), _x(r.get("kiln_vs_best_compile")),
            _pct(k), _pct(best),
            f"{chk['cosine']:.6f}" if chk else "—", f"{chk['max_abs_err']:.3g}" if chk else "—"]))
    return lines + [""] + skipped_notes(rows) + compile_table(model, rows, peers)


def skipped_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = [f"- {r['precision']} b{r['batch']} {p}: {e['skipped']}" for r in rows
             for p, e in r["peers"].items() if "skipped" in e]
    notes += [f"- {r['precision']} b{r['batch']} {p}: {e['error']}" for r in rows
              for p, e in r["peers"].items() if "error" in e]
    return ["Peers not timed:", "", *notes, ""] if notes else []


def compile_table(model: dict[str, Any], rows: list[dict[str, Any]], peers: list[str]) -> list[str]:
    """torch.compile's first-call seconds per batch beside kiln's build (one engine serves every batch)."""
    compiled = [p for p in peers if p != "eager"]
    lines = ["Compile time, seconds: torch.compile's first call per batch; kiln's engine build (cold / warm "
             "timing cache), one engine for all batches:", ""]
    lines += _head(["precision", "batch", *compiled, "kiln cold build", "kiln warm build"])
    for r in rows:
        b = model["builds"].get(r["precision"], {})
        cells = [f"{r['peers'][p]['first_call_s']:.1f}" if "first_call_s" in r["peers"].get(p, {})
                 else _ms(r["peers"].get(p)) for p in compiled]
        lines.append(_row([r["precision"], str(r["batch"]), *cells, _num(b.get("build_s"), ".1f"),
                           _num(b.get("warm_build_s"), ".1f")]))
    return lines + [""]


def quant_table(model: dict[str, Any]) -> list[str]:
    """int8/fp8 beside kiln fp16 and the best torch.compile fp16 peer, accuracy beside speed."""
    rows = [r for r in model["rows"] if r["precision"] in QUANTIZED]
    if not rows:
        return []
    lines = ["int8 / fp8 against fp16 (same run, same batch):", ""]
    lines += _head(["precision", "batch", "status", "kiln ms", "kiln items/s", "kiln fp16 items/s", "vs kiln fp16",
                    "best compile fp16", "its items/s", "vs best compile fp16", "cosine min", "cosine mean",
                    "top-1 agree"])
    for r in rows:
        k, base, acc = r.get("kiln"), r.get("baseline") or {}, r.get("accuracy") or {}
        fp16_ms, best_ms = base.get("kiln_fp16_ms"), base.get("best_compile_ms")
        lines.append(_row([
            r["precision"], str(r["batch"]), r["status"], _ms(k),
            f"{k['items_per_s']:.0f}" if k else "—",
            f"{r['batch'] / (fp16_ms * 1e-3):.0f}" if fp16_ms else "—", _x(r.get("vs_kiln_fp16")),
            base.get("best_compile") or "—", f"{r['batch'] / (best_ms * 1e-3):.0f}" if best_ms else "—",
            _x(r.get("vs_best_compile_fp16")),
            _num(acc.get("cosine_min"), ".6f"), _num(acc.get("cosine_mean"), ".6f"),
            _top1(acc)]))
    return lines + [""] + quant_notes(model, rows)


def _top1(acc: dict[str, Any]) -> str:
    if acc.get("top1_agreement") is None:
        return "—"
    n = acc["distinct_top1"]
    return f"{acc['top1_agreement']:.3f} ({n} class{'es' if n != 1 else ''})"


def quant_notes(model: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    cal, samples = model.get("calibration") or {}, model.get("samples") or {}
    bars = sorted({(r["precision"], r["accuracy"]["min_cosine"]) for r in rows if r.get("accuracy")})
    lines = [f"Accuracy: the engine against PyTorch fp32 on {samples.get('evaluation', '?')} evaluation samples "
             f"({samples.get('data', '?')}), never the calibration ones. A sanity figure, not real-data accuracy: "
             "synthetic inputs, and random weights for every model but MiniLM. Bar: cosine min >= "
             + (", ".join(f"{b} ({p})" for p, b in bars) or "—") + "; an engine below it is timed all the same "
             "and marked LOW ACCURACY. The fp16 engine's figures on the same samples are in the builds table. "
             "top-1 agree: the share of samples whose argmax matches fp32's (in brackets, how many classes fp32 "
             "picked: a random-init classifier often puts every image in one class, by a thin margin)."]
    if "error" in cal:
        lines.append(f"Calibration FAILED: {cal['error']}")
    elif cal:
        lines.append(f"Calibration: {cal['method']} ranges from {cal['samples']} samples in batches of {cal['batch']} "
                     f"({cal['seconds']:.1f} s, once per model, not part of the build times).")
    return lines + [""]


def model_table(model: dict[str, Any], peers: list[str]) -> str:
    lines = [f"### {model['name']} — {model['source']}", ""]
    if model.get("error"):
        return "\n".join(lines + [f"FAILED before timing: {model['error']}", ""])
    lines += builds_table(model) + float_table(model, peers) + quant_table(model)
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    peers = results["meta"]["peers"]
    parts = [header(results["meta"], results["peak_tflops"]), ""]
    parts += [model_table(m, peers) for m in results["models"]]
    parts.append("`kiln vs best` = best peer's time / kiln's time (above 1: kiln is faster); `best compile` = the "
                 "fastest torch.compile mode that ran (max-autotune included when requested and not skipped). A "
                 "float row whose kiln output misses the cosine bar against PyTorch fp32 is FAILED and gets no "
                 f"ratio, unless its error (1 - cosine) is within {results['meta'].get('peer_error_factor', 2):g}x "
                 "that of PyTorch "
                 "eager computing in the same precision on the same inputs (bf16 through a deep network can "
                 "miss the bar by its type alone).")
    return "\n".join(parts)

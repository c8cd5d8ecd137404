"""The suite's results as markdown: a header per run, a table per model.

Results are plain dicts (the JSON the suite writes):
  {"meta": {...}, "peak_tflops": {precision: x}, "models": [
     {"name", "source", "onnx", "export_s", "error"?, "builds": {precision: {"build_s"} | {"error"}},
      "rows": [{"precision", "batch", "status", "flops", "kiln": {...}|None, "peers": {name: {...}},
                "best_peer", "kiln_vs_best"}]}]}
A contender's entry: {"ms", "items_per_s", "iterations", "check": {...}, "tflops", "peak_fraction",
"first_call_s" (peers)} or {"skipped": reason}.
"""
from __future__ import annotations

from typing import Any

WEIGHTS_NOTE = ("Weights: random initialisation (seeded), not trained: these are speed figures; "
                "every contender runs the same weights and inputs.")


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


def header(meta: dict[str, Any], peak: dict[str, float]) -> str:
    peaks = ", ".join(f"{p} {v:.0f} TFLOP/s" for p, v in peak.items())
    return "\n".join([
        f"## kiln benchmark suite — {meta['card']}, {meta['date']}",
        "",
        f"Command: `{meta['command']}`",
        f"torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, "
        f"timm {meta['timm']}, kiln {meta['kiln']}; TF32 off (fp32 is IEEE fp32 for every contender).",
        f"Timing: median of up to {meta['iters']} runs ({meta['timer']}), inputs already on the device; "
        "kiln with CUDA graphs (its default); torch.compile peers specialised per batch, timed after "
        "their first call.",
        f"Matmul peak ({meta['peak_n']}³ torch.mm, measured in this run): {peaks or '—'}. "
        "`% peak` = model FLOPs (torch FlopCounterMode) / time / that peak.",
        WEIGHTS_NOTE,
    ])


def model_table(model: dict[str, Any], peers: list[str]) -> str:
    lines = [f"### {model['name']} — {model['source']}", ""]
    if model.get("error"):
        return "\n".join(lines + [f"FAILED before timing: {model['error']}", ""])
    builds = ", ".join(f"{p} {b['build_s']:.1f} s" if "build_s" in b else f"{p} FAILED ({b['error']})"
                       for p, b in model["builds"].items())
    lines += [f"kiln build time: {builds}; ONNX export {model['export_s']:.1f} s", ""]
    for p, b in model["builds"].items():
        if "tactic_kinds" in b:
            kinds = ", ".join(f"{k} {n}" for k, n in b["tactic_kinds"].items())
            lines += [f"kiln {p} engine: {b['steps']} steps by kernel kind: {kinds}", ""]
    cols = ["precision", "batch", "status", "kiln ms", "kiln items/s", *[f"{p} ms" for p in peers],
            "best peer", "kiln vs best", "kiln % peak", "best % peak", "kiln cosine", "kiln max abs err"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in model["rows"]:
        k = r.get("kiln")
        best = r["peers"].get(r["best_peer"]) if r.get("best_peer") else None
        chk = (k or {}).get("check") or r.get("check")
        cells = [r["precision"], str(r["batch"]), r["status"], _ms(k),
                 f"{k['items_per_s']:.0f}" if k and "items_per_s" in k else "—",
                 *[_ms(r["peers"].get(p)) for p in peers],
                 r.get("best_peer") or "—",
                 f"{r['kiln_vs_best']:.2f}x" if r.get("kiln_vs_best") else "—",
                 _pct(k), _pct(best),
                 f"{chk['cosine']:.6f}" if chk else "—", f"{chk['max_abs_err']:.3g}" if chk else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    compiled = [p for p in peers if p != "eager"]
    if compiled:
        lines += ["", "torch.compile first call (compile) seconds:", "",
                  "| precision | batch | " + " | ".join(compiled) + " |", "|---|---|" + "---|" * len(compiled)]
        for r in model["rows"]:
            cells = [f"{r['peers'][p]['first_call_s']:.1f}" if "first_call_s" in r["peers"].get(p, {}) else "—"
                     for p in compiled]
            lines.append(f"| {r['precision']} | {r['batch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def markdown(results: dict[str, Any]) -> str:
    peers = results["meta"]["peers"]
    parts = [header(results["meta"], results["peak_tflops"]), ""]
    parts += [model_table(m, peers) for m in results["models"]]
    parts.append("`kiln vs best` = best peer's time / kiln's time (above 1: kiln is faster). A row whose kiln "
                 "output misses the cosine bar against PyTorch fp32 is FAILED and gets no ratio.")
    return "\n".join(parts)

"""`kiln inspect`: what an engine holds, readable on any machine (no device check)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli import output
from kiln.cli.build_summary import precision_line, tuning_line
from kiln.cli.enginefile import format_version, read_unchecked

if TYPE_CHECKING:
    import torch

    from kiln.engine.plan import Plan


def _binding(b: Any) -> dict[str, Any]:
    return {"name": b.name, "dtype": b.dtype, "shape": list(b.shape)}


def _layers(plan: Plan) -> list[dict[str, Any]]:
    layers = []
    for i, s in enumerate(plan.steps):
        outs = [{"name": plan.slots[o].name, "dtype": plan.slots[o].dtype,
                 "shape": None if plan.slots[o].shape is None else list(plan.slots[o].shape)} for o in s.outputs]
        layers.append({"index": i, "name": s.name, "op": s.op, "tactic": s.tactic, "config": dict(s.config),
                       "fused": list(s.fused), "outputs": outs, "tuning": _tuning(s.tuning)})
    return layers


def _tuning(t: Any) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"ms": t.ms, "runner_up": t.runner_up, "runner_up_config": dict(t.runner_up_config),
            "runner_up_ms": t.runner_up_ms, "candidates": t.candidates, "cached": t.cached}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def engine_report(path: Path) -> dict[str, Any]:
    from kiln.engine.serialize import plan_from_json
    from kiln.runtime.engine import SOURCE_KEY

    header, tensors = read_unchecked(path)
    plan = plan_from_json(header["plan"], tensors)
    source = tensors.get(SOURCE_KEY)
    return {
        "engine": str(path),
        "file_bytes": path.stat().st_size,
        "format_version": format_version(path),
        "kiln_version": header.get("kiln_version"),
        "device": header["device"],
        "precision": header["build_config"].get("precision"),
        # Layers computed in a type other than the engine's, and why (precision/decision.py).
        "layer_precision": header.get("build", {}).get("precision", {}).get("layers", []),
        "build_config": header["build_config"],
        "source": header.get("source", {}),
        "build": header.get("build", {}),
        "inputs": [_binding(b) for b in plan.inputs],
        "outputs": [_binding(b) for b in plan.outputs],
        "profiles": header["build_config"].get("profiles", []),
        "layers": _layers(plan),
        "op_counts": dict(Counter(s.op for s in plan.steps).most_common()),
        "memory": {
            "peak_activation_bytes": plan.memory.peak_bytes,
            "total_activation_bytes": plan.memory.total_bytes,
            # Weights: every stored tensor but the embedded source model.
            "weights_bytes": sum(_nbytes(t) for k, t in tensors.items() if k != SOURCE_KEY),
            "embedded_source_bytes": 0 if source is None else _nbytes(source),
        },
    }


@click.command("inspect")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def inspect(engine_path: Path, as_json: bool) -> None:
    """Show what ENGINE holds: header, bindings, shape profiles, layers, op counts and memory.

    Works on any machine: an engine built for a GPU can be inspected on a CPU-only one.
    """
    report = engine_report(engine_path)
    if as_json:
        output.emit_json(report)
    else:
        _print(report)


def _print(r: dict[str, Any]) -> None:
    out = output.stdout()
    dev, src, build = r["device"], r["source"], r["build"]
    where = dev.get("name") or dev["kind"]
    if dev["kind"] == "cuda":
        cc = dev.get("compute_capability") or ["?", "?"]
        where = f"{where} (compute capability {cc[0]}.{cc[1]}, CUDA {dev.get('cuda')}, driver {dev.get('driver')})"
    out.print(output.key_values(None, [
        ("engine", f"{r['engine']} ({output.fmt_bytes(r['file_bytes'])})"),
        ("kiln / format", f"kiln {r['kiln_version']}, engine format {r['format_version']}"),
        ("device", f"{dev['kind']}: {where}; torch {dev.get('torch')}, triton {dev.get('triton')}"),
        ("precision", precision_line(r["precision"], r["build_config"].get("strongly_typed", False),
                                     r["layer_precision"])),
        ("source", f"{src.get('name')} sha256 {src.get('sha256')}"
                   + (" (embedded)" if src.get("embedded") else " (not embedded)")),
        ("build", f"{build.get('source_nodes', '?')} source nodes -> {len(r['layers'])} layers in "
                  f"{build.get('seconds', '?')} s"),
        ("tuning", tuning_line(build.get("tuning", "not recorded"))),
    ]))
    out.print(output.table("bindings", ["io", "name", "dtype", "shape"],
                           [["input", b["name"], b["dtype"], output.fmt_shape(b["shape"])] for b in r["inputs"]]
                           + [["output", b["name"], b["dtype"], output.fmt_shape(b["shape"])] for b in r["outputs"]]))
    out.print(output.table("profiles", ["#", "input", "min", "opt", "max"],
                           [[i, n, output.fmt_shape(v["min"]), output.fmt_shape(v["opt"]), output.fmt_shape(v["max"])]
                            for i, p in enumerate(r["profiles"]) for n, v in p.items()]))
    _print_layers(out, r["layers"])
    if r["layer_precision"]:
        out.print(output.table("layer precision (exceptions to the engine's)", ["layer", "op", "fused from", "precision", "why"],
                               [[l["layer"], l["op"], ", ".join(l.get("fused_from", ())), l["precision"], l["reason"]]
                                for l in r["layer_precision"]]))
    out.print(output.table("op counts", ["op", "layers"], r["op_counts"].items(), right=["layers"]))
    m = r["memory"]
    out.print(output.key_values("memory", [
        ("activations", f"{output.fmt_bytes(m['peak_activation_bytes'])} planned peak, "
                        f"{output.fmt_bytes(m['total_activation_bytes'])} if none were reused (at opt shapes)"),
        ("weights", output.fmt_bytes(m["weights_bytes"])),
        ("embedded source", output.fmt_bytes(m["embedded_source_bytes"])),
    ]))


def _print_layers(out: Any, layers: list[dict[str, Any]]) -> None:
    """The layer table; with time and runner-up columns when the engine was tuned."""
    tuned = any(l["tuning"] for l in layers)
    head = ["#", "name", "op", "tactic", "fused from", "outputs"] + (["time", "runner-up"] if tuned else [])
    rows = []
    for l in layers:
        tactic = l["tactic"] + (f" {_fmt_config(l['config'])}" if l["config"] else "")
        row = [l["index"], l["name"], l["op"], tactic, ", ".join(l["fused"]),
               "; ".join(f"{o['dtype']}{output.fmt_shape(o['shape'])}" for o in l["outputs"])]
        if tuned:
            row += _tuning_cells(l["tuning"])
        rows.append(row)
    out.print(output.table("layers", head, rows, right=["#", "time"]))


def _tuning_cells(t: dict[str, Any] | None) -> list[str]:
    if t is None:
        return ["", ""]
    time = "" if t["ms"] is None else f"{t['ms']:.4f} ms" + (" (cached)" if t["cached"] else "")
    if t["runner_up"] is None:
        return [time, "none valid" if t["candidates"] > 1 else ""]
    cfg = f" {_fmt_config(t['runner_up_config'])}" if t["runner_up_config"] else ""
    ru_ms = "" if t["runner_up_ms"] is None else f" {t['runner_up_ms']:.4f} ms"
    return [time, f"{t['runner_up']}{cfg}{ru_ms}"]


def _fmt_config(config: dict[str, Any]) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in config.items()) + "]"

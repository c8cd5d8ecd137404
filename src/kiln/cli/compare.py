"""`kiln compare`: an engine's outputs against onnxruntime or a kiln fp32 engine (Polygraphy's `run`).

Exit codes: 0 when every output is within tolerance, 1 when any is not (after the report),
2 when the comparison could not be made (bad model, engine, inputs or options).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import output
from kiln.cli.build import precision_from_flags
from kiln.cli.shapes import parse_shapes
from kiln.accuracy.compare import COMPARABLE
from kiln.config import DEVICES
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.accuracy.compare import CompareReport
    from kiln.accuracy.metrics import OutputMetrics

WORST = 10  # tensors listed by --all-layers
COLUMNS = ["name", "shape", "max abs", "mean abs", "max rel", "mean rel", "cosine", "min row cos", "top-k",
           "mismatches", "result"]


@click.command("compare")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The engine to check; built from MODEL (at --precision, on --device) when omitted.")
@click.option("--fp16", is_flag=True, help="Build the engine in float16 (same as --precision fp16).")
@click.option("--bf16", is_flag=True, help="Build the engine in bfloat16 (same as --precision bf16).")
@click.option("--precision", type=click.Choice(COMPARABLE), default=None,
              help="Precision of the engine built from MODEL [default: fp32].")
@click.option("--device", type=click.Choice(DEVICES), default=None,
              help="Device of the engine built from MODEL [default: auto].")
@click.option("--against", type=click.Choice(("onnxruntime", "fp32")), default="onnxruntime", show_default=True,
              help="The reference: onnxruntime (CPU) or a kiln fp32 engine of MODEL.")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz file of inputs by name (numpy.savez); seeded random inputs when omitted.")
@click.option("--shapes", metavar="NAME:DIMS[,...]",
              help="Shapes of the random inputs (default: the engine's opt shapes).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--atol", type=float, default=None,
              help="Absolute tolerance [default: 1e-5 for fp32 engines, 1e-2 for fp16/bf16].")
@click.option("--rtol", type=float, default=None,
              help="Relative tolerance [default: 1e-4 for fp32 engines, 1e-2 for fp16/bf16].")
@click.option("--top-k", "top_k", type=int, default=None,
              help="Also report, per output, the fraction of rows whose top-k classes agree.")
@click.option("--all-layers", is_flag=True,
              help="Compare every intermediate tensor and report the first one that diverges.")
@click.option("--calib-data", "calib_data", type=click.Path(path_type=Path), default=None,
              help="With --all-layers and an --int8/--fp8 --engine: its calibration data (an .npz keyed by input "
                   "name, or a folder of .npz/.npy batches), to calibrate the rebuilt engine again.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def compare(ctx: click.Context, model: Path, engine_path: Path | None, fp16: bool, bf16: bool,
            precision: str | None, device: str | None, against: str, inputs_path: Path | None, shapes: str | None,
            seed: int, atol: float | None, rtol: float | None, top_k: int | None, all_layers: bool,
            calib_data: Path | None, as_json: bool) -> None:
    """Run an engine of MODEL and a reference on the same inputs; report each output's error.

    Per output: max/mean absolute and relative error, cosine similarity (whole tensor and
    worst row) and, with --top-k, top-k agreement. An output passes when every element
    satisfies |kiln - ref| <= atol + rtol * |ref| (numpy.allclose). Exit code 0 when all
    pass, 1 when any fails, 2 when the comparison cannot be made.
    """
    chosen = precision_from_flags(fp16, bf16, precision)
    dims = parse_shapes(shapes)
    if engine_path is not None and (chosen != "fp32" or device is not None):
        raise click.UsageError("--engine gives the engine to check, with its own precision and device; leave out "
                               "--precision/--fp16/--bf16/--device, or leave out --engine to build one here.")
    if calib_data is not None and not (all_layers and engine_path is not None):
        raise click.UsageError("--calib-data calibrates the int8/fp8 engine --all-layers rebuilds; give it with "
                               "--all-layers and --engine, or leave it out.")
    if inputs_path is not None and dims:
        raise click.UsageError("--shapes sets the shapes of random inputs; with --inputs the arrays' own "
                               "shapes are used, so give only one of them.")
    try:
        report = _run(model, engine_path, chosen, device or "auto", against, inputs_path, dims, seed, atol, rtol,
                      top_k, all_layers, calib_data)
    except KilnError as exc:
        from kiln.cli.main import format_error  # here, not at import: main imports this module

        click.echo(format_error(exc), err=True)
        ctx.exit(2)
    if as_json:
        output.emit_json(report.to_json())
    else:
        _print(report)
    ctx.exit(0 if report.passed else 1)


def _run(model: Path, engine_path: Path | None, precision: str, device: str, against: str,
         inputs_path: Path | None, dims: dict[str, list[int]], seed: int, atol: float | None,
         rtol: float | None, top_k: int | None, all_layers: bool, calib_data: Path | None) -> CompareReport:
    from kiln.accuracy.compare import compare as compare_model
    from kiln.cli.feeds import load_npz

    feeds = load_npz(inputs_path) if inputs_path is not None else None
    return compare_model(model, engine=engine_path, precision=precision, against=against, feeds=feeds,
                         shapes=dims or None, seed=seed, atol=atol, rtol=rtol, top_k=top_k,
                         all_layers=all_layers, device=device,
                         calibration=None if calib_data is None else str(calib_data))


def _print(report: CompareReport) -> None:
    out = output.stdout()
    inputs = ", ".join(f"{n}{output.fmt_shape(s)} {d}" for n, s, d in report.inputs) or "(none)"
    source = "random, seed " + str(report.seed) if report.seed is not None else "from file"
    out.print(output.key_values("compare", [
        ("model", report.model),
        ("engine", f"{report.engine}; {report.precision} on {report.device}"),
        ("reference", "onnxruntime (CPU)" if report.against == "onnxruntime" else "kiln fp32 engine"),
        ("inputs", f"{inputs} ({source})"),
        ("tolerance", f"|kiln - ref| <= {report.atol:g} + {report.rtol:g} * |ref|"),
    ]))
    if report.all_layers:
        _print_layers(report)
    else:
        out.print(output.table("outputs", COLUMNS, (_row(m) for m in report.outputs)))
    failed = [m for m in report.outputs if not m.passed]
    what = "tensors" if report.all_layers else "outputs"
    if failed:
        out.print(f"FAIL: {len(failed)} of {len(report.outputs)} {what} outside the tolerance", markup=False)
    else:
        out.print(f"PASS: all {len(report.outputs)} {what} within the tolerance", markup=False)


def _print_layers(report: CompareReport) -> None:
    out = output.stdout()
    first = report.first_divergence
    if first is None:
        out.print(f"no tensor diverges: all {len(report.outputs)} intermediate tensors are within the tolerance",
                  markup=False)
    else:
        index = report.outputs.index(first) + 1
        out.print(f"first diverging tensor: {first.name} (tensor {index} of {len(report.outputs)} in topological "
                  f"order)", markup=False)
        out.print(output.table(None, COLUMNS, [_row(first)]))
    out.print(output.table(f"worst {min(WORST, len(report.outputs))} tensors", ["ratio", *COLUMNS],
                           ([_f(m.tolerance_ratio), *_row(m)] for m in report.worst(WORST))))


def _row(m: OutputMetrics) -> list[str]:
    mism = f"{m.mismatches}/{m.size}" + (f" ({m.nonfinite_mismatches} nan/inf)" if m.nonfinite_mismatches else "")
    shape = output.fmt_shape(m.shape) + ("" if m.shape == m.reference_shape
                                         else f" vs ref {output.fmt_shape(m.reference_shape)}")
    top = "" if m.top_k_agreement is None else f"top-{m.top_k} {m.top_k_agreement:.4f}"
    return [m.name, shape, _f(m.max_abs), _f(m.mean_abs), _f(m.max_rel), _f(m.mean_rel), _cos(m.cosine),
            "" if m.min_row_cosine is None else _cos(m.min_row_cosine), top, mism, "PASS" if m.passed else "FAIL"]


def _f(x: float) -> str:
    return output.fmt_float(x) if math.isnan(x) or math.isinf(x) else f"{x:.3g}"


def _cos(x: float) -> str:
    return output.fmt_float(x) if math.isnan(x) else f"{x:.6f}"

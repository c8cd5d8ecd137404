"""`kiln run`: run an engine once and show (or save) its outputs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from kiln.cli import output
from kiln.cli.feeds import load_npz, random_feeds, to_numpy
from kiln.cli.shapes import parse_shapes

PREVIEW = 6  # leading values shown per output


def describe(arr: np.ndarray) -> dict[str, Any]:
    """Shape, dtype, a few leading values and summary statistics of one array."""
    info: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                            "values": arr.reshape(-1)[:PREVIEW].tolist()}
    if arr.size and arr.dtype.kind in "fiub":
        x = arr.astype(np.float64)
        finite = np.isfinite(x)
        info["nan"] = int(np.isnan(x).sum())
        info["inf"] = int(np.isinf(x).sum())
        if finite.any():
            xf = x[finite]
            info.update(min=float(xf.min()), max=float(xf.max()), mean=float(xf.mean()), std=float(xf.std()))
    return info


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Through a file object, so numpy does not append ".npz" to a name given without it.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@click.command("run")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz file of inputs by name (numpy.savez); random inputs when omitted.")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the outputs to this .npz file.")
@click.option("--save-inputs", "save_inputs_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the inputs used (random or loaded) to this .npz file, to reproduce the run.")
@click.option("--shapes", metavar="NAME:DIMS[,...]",
              help="Shapes of the random inputs (default: the profile's opt shapes).")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs' summary as JSON on stdout.")
def run(engine_path: Path, inputs_path: Path | None, outputs_path: Path | None, save_inputs_path: Path | None,
        shapes: str | None, as_json: bool) -> None:
    """Run ENGINE once and print each output's name, shape, dtype, leading values and statistics.

    Without --inputs, inputs are random (standard normal floats, zero integers, seed 0)
    at the engine's opt shapes or at --shapes.
    """
    import kiln

    dims = parse_shapes(shapes)
    if inputs_path is not None and dims:
        raise click.UsageError("--shapes sets the shapes of random inputs; with --inputs the arrays' own "
                               "shapes are used, so give only one of them.")
    engine = kiln.load(engine_path)
    t0 = time.perf_counter()
    if inputs_path is not None:
        arrays = load_npz(inputs_path)
        outputs = {k: np.asarray(v) for k, v in engine(**arrays).items()}
        inputs = arrays
    else:
        feeds = random_feeds(engine, dims)
        outputs = {k: to_numpy(v) for k, v in engine.run_tensors(feeds).items()}
        inputs = {k: to_numpy(v) for k, v in feeds.items()}
    seconds = time.perf_counter() - t0
    if outputs_path is not None:
        _save_npz(outputs_path, outputs)
    if save_inputs_path is not None:
        _save_npz(save_inputs_path, inputs)
    report = {
        "engine": str(engine_path),
        "device": str(engine.device),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                       "source": "file" if inputs_path is not None else "random"} for k, v in inputs.items()},
        "outputs": {k: describe(v) for k, v in outputs.items()},
        "seconds": seconds,
        "saved": None if outputs_path is None else str(outputs_path),
    }
    if as_json:
        output.emit_json(report)
    else:
        _print(report)


def _print(report: dict[str, Any]) -> None:
    out = output.stdout()
    out.print(output.table("inputs", ["name", "shape", "dtype", "from"],
                           ([k, output.fmt_shape(v["shape"]), v["dtype"], v["source"]]
                            for k, v in report["inputs"].items())))
    rows = []
    for k, v in report["outputs"].items():
        stats = (f"min {output.fmt_float(v['min'])}  max {output.fmt_float(v['max'])}  "
                 f"mean {output.fmt_float(v['mean'])}  std {output.fmt_float(v['std'])}") if "min" in v else ""
        if v.get("nan") or v.get("inf"):
            stats += f"  nan {v['nan']}  inf {v['inf']}"
        values = ", ".join(output.fmt_float(x) if isinstance(x, float) else str(x) for x in v["values"])
        more = " ..." if len(v["values"]) < math.prod(v["shape"]) else ""
        rows.append([k, output.fmt_shape(v["shape"]), v["dtype"], values + more, stats])
    out.print(output.table("outputs", ["name", "shape", "dtype", "values", "stats"], rows))
    tail = f"ran on {report['device']} in {report['seconds'] * 1e3:.2f} ms (first run, not a benchmark)"
    if report["saved"]:
        tail += f"; outputs saved to {report['saved']}"
    out.print(tail, markup=False)

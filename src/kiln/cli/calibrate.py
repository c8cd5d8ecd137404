"""`kiln calibrate`: activation ranges of a model on calibration data -> a calibration cache
(trtexec's --calib file), so that `kiln build --int8 --calib-cache FILE` needs no data."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from kiln.cli import output
from kiln.cli.build import profile_from_options
from kiln.cli.calib_options import calibration_method_options
from kiln.config import WEIGHT_ROUNDINGS, BuildConfig
from kiln.errors import KilnError


@contextmanager
def calibration_progress() -> Iterator[tuple[Callable[[str], None], Callable[[int], None]]]:
    """(stage, batch) callbacks: one live line on a terminal (stage, batches done, time); on a log,
    one line per stage and none per batch."""
    err = output.stderr()
    if err.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[count]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("calibrating: starting", total=None, count="")

            def stage(text: str) -> None:
                if not text.startswith("pass "):
                    bar.update(task, description=f"calibrating: {text}")

            def batch(n: int) -> None:
                bar.update(task, description="calibrating", count=f"{n} batch{'es' if n != 1 else ''} done")
            yield stage, batch
    else:
        def log(text: str) -> None:
            if not text.startswith("pass "):
                err.print(f"calibrating: {text}", markup=False)
        yield log, lambda _n: None


def ranges_report(record: dict[str, Any], ranges: dict[str, float], out: Path) -> dict[str, Any]:
    top = sorted(ranges.items(), key=lambda kv: -kv[1])
    return {"cache": str(out), "method": record["method"], "batches": record["batches"], "tensors": len(ranges),
            "largest_ranges": [{"tensor": n, "amax": a} for n, a in top[:5]]}


@click.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib-data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Calibration inputs: an .npz keyed by input name (axis 0 the samples) or a folder of "
                   ".npz/.npy files, one batch each.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the calibration cache (JSON).")
@calibration_method_options
@click.option("--shapes", metavar="NAME:DIMS[,...]",
              help="Static shapes for inputs with dynamic dims, e.g. input:8x3x224x224.")
@click.option("--weight-rounding", "weight_rounding", type=click.Choice(WEIGHT_ROUNDINGS), default="nearest",
              show_default=True,
              help="gptq: also write the Gram matrices GPTQ rounds against (OUTPUT.gram.npz), so that "
                   "`kiln build --weight-rounding gptq --calib-cache OUTPUT` needs no data.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def calibrate(model: Path, calib_data: Path, out: Path, calib_method: str, calib_percentile: float,
              calib_batch_size: int, shapes: str | None, weight_rounding: str, as_json: bool) -> None:
    """Calibrate MODEL (an .onnx file) on --calib-data and write the activation ranges to -o.

    The ranges are those an int8 build uses (same optimised graph, same method); give the
    file to `kiln build MODEL --int8 --calib-cache FILE`, which reuses it while the model and
    method are unchanged. The file is written atomically. With --weight-rounding gptq the
    Gram matrices GPTQ needs go beside it (FILE.gram.npz).
    """
    from kiln.compiler.builder import optimized_graph
    from kiln.compiler.quantize_step import calibration_statistics, gram_requests

    if out.exists() and out.is_dir():
        raise KilnError(f"the output path {str(out)!r} is a folder; give a file name such as model.calib.json.")
    config = BuildConfig(precision="int8", device="cpu", profiles=profile_from_options(shapes, None, None, None),
                         calib_data=str(calib_data), calib_method=calib_method, calib_percentile=calib_percentile,
                         calib_batch_size=calib_batch_size, calib_cache=str(out))
    with calibration_progress() as (stage, batch):
        front = optimized_graph(model, config, stage)
        grams, conv_grams = gram_requests(front.graph) if weight_rounding == "gptq" else (None, None)
        ranges, _, record = calibration_statistics(front.graph, front.source, config, say=stage, on_batch=batch,
                                                   reuse_cache=False, grams=grams, conv_grams=conv_grams)
    info = ranges_report(record, ranges, out)
    if grams is not None:
        from kiln.calibration.gram_cache import gram_path
        info["gram_matrices"] = {"file": str(gram_path(out)),
                                 "matmul_inputs": sum(g is not None for g in grams.values()),
                                 "convolutions": sum(g is not None for g in (conv_grams or {}).values())}
    if as_json:
        output.emit_json(info)
        return
    output.stdout().print(output.key_values("calibration cache written", [
        ("cache", info["cache"]),
        ("method", calib_method + (f" ({calib_percentile}th percentile)" if calib_method == "percentile" else "")),
        ("data", f"{info['batches']} batch(es) from {calib_data}"),
        ("tensors", f"{info['tensors']} activation ranges"),
        ("largest", ", ".join(f"{r['tensor']}: {output.fmt_float(r['amax'])}" for r in info["largest_ranges"])),
        *([("GPTQ", f"Gram matrices of {g['matmul_inputs']} matmul input(s) and {g['convolutions']} convolution(s) "
                    f"in {g['file']}")] if (g := info.get("gram_matrices")) else []),
    ]))

"""`kiln build`: ONNX model -> engine file (trtexec --onnx ... --saveEngine ...)."""
from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from kiln.cli import output
from kiln.cli.build_summary import print_summary, summary
from kiln.cli.calib_options import calibration_method_options, smooth_quant_option
from kiln.cli.shapes import parse_shapes
from kiln.config import (BUDGET_BATCHES, DEVICES, LAYER_PRECISIONS, PRECISIONS, WEIGHT_ROUNDINGS, WEIGHT_SCALES,
                         BuildConfig, Profile)
from kiln.errors import KilnError

if TYPE_CHECKING:
    import onnx

    from kiln.runtime.engine import Engine


def precision_from_flags(fp16: bool, bf16: bool, precision: str | None, int8: bool = False,
                         fp8: bool = False) -> str:
    """The one precision the flags ask for, or "int8+fp16"-style for --int8/--fp8 with --fp16/--bf16
    (TensorRT's --int8 --fp16: the non-quantized layers in 16 bits)."""
    chosen = {p for p, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8), ("fp8", fp8)) if on} | \
        ({precision} if precision else set())
    quantized, floats = sorted(chosen & {"int8", "fp8"}), sorted(chosen & {"fp16", "bf16"})
    if len(chosen) == 2 and len(quantized) == 1 and len(floats) == 1:
        return f"{quantized[0]}+{floats[0]}"
    if len(chosen) > 1:
        raise click.UsageError(f"conflicting precisions {', '.join(sorted(chosen))}; give one of "
                               "--fp16, --bf16, --int8, --fp8 or --precision (or --int8/--fp8 with --fp16/--bf16 "
                               "for 16-bit float layers beside the quantized ones).")
    return chosen.pop() if chosen else "fp32"


def layer_rules_from_options(rules: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """--layer-precision NAME_OR_PATTERN=PRECISION, repeatable, in the order given (earlier wins)."""
    parsed = []
    for rule in rules:
        pattern, sep, precision = rule.rpartition("=")
        if not sep or not pattern:
            raise click.UsageError(f"--layer-precision {rule!r} is not NAME_OR_PATTERN=PRECISION; give e.g. "
                                   "--layer-precision 'encoder/*=fp32'.")
        if precision not in LAYER_PRECISIONS:
            raise click.UsageError(f"--layer-precision {rule!r} asks for {precision!r}; a layer can keep one of "
                                   f"{', '.join(LAYER_PRECISIONS)} (tf32 is an engine precision: use --precision tf32).")
        parsed.append((pattern, precision))
    return tuple(parsed)


def profile_from_options(shapes: str | None, min_s: str | None, opt_s: str | None,
                         max_s: str | None) -> tuple[Profile, ...]:
    """--shapes gives a static profile; --min/--opt/--max-shapes a range (all three, same names)."""
    ranged = {"--min-shapes": min_s, "--opt-shapes": opt_s, "--max-shapes": max_s}
    given = [k for k, v in ranged.items() if v]
    if shapes and given:
        raise click.UsageError("give either --shapes (a static profile) or --min-shapes/--opt-shapes/"
                               "--max-shapes (a range), not both.")
    if shapes:
        return (Profile.static(parse_shapes(shapes)),)
    if not given:
        return ()
    if len(given) != 3:
        missing = [k for k in ranged if k not in given]
        raise click.UsageError(f"a shape range needs --min-shapes, --opt-shapes and --max-shapes together; "
                               f"{' and '.join(missing)} missing.")
    lo, opt, hi = (parse_shapes(v, k) for k, v in ranged.items())
    if not (set(lo) == set(opt) == set(hi)):
        raise click.UsageError(f"--min-shapes, --opt-shapes and --max-shapes must name the same inputs; they "
                               f"name {sorted(lo)}, {sorted(opt)} and {sorted(hi)}.")
    return (Profile.from_ranges({n: (lo[n], opt[n], hi[n]) for n in lo}),)


# The builder's tuning messages, "tuning layer i/N", drive a progress bar.
_TUNING = re.compile(r"tuning layer (\d+)/(\d+)$")


@contextmanager
def progress_display(label: str) -> Iterator[Callable[[str], None]]:
    """The current stage on a terminal (a bar while tuning); plain stage lines on stderr otherwise."""
    err = output.stderr()
    if err.is_terminal:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(f"{label}: starting", total=None, count="")

            def show(stage: str) -> None:
                m = _TUNING.match(stage)
                if m:
                    i, n = int(m[1]), int(m[2])
                    # Layer i is being tuned, so i - 1 are done (and the task never "finishes").
                    bar.update(task, description=f"{label}: tuning layer", completed=i - 1, total=n,
                               count=f"{i}/{n}")
                else:
                    bar.update(task, description=f"{label}: {stage}", completed=0, total=None, count="")
            yield show
    else:
        # In logs, one line per stage; per-pass and per-layer updates would only add noise there.
        def log(stage: str) -> None:
            m = _TUNING.match(stage)
            if m and m[1] != "1":
                return
            if not stage.startswith("pass "):
                err.print(f"{label}: {stage}" if not m else f"{label}: tuning {m[2]} layers", markup=False)
        yield log


def build_and_save(model: str | os.PathLike | onnx.ModelProto, config: BuildConfig, out: Path,
                   label: str = "building", source: dict[str, Any] | None = None,
                   calibration: str | None = None) -> tuple[Engine, int]:
    """Build with a progress display and write the engine; returns it and the file's size.

    `source` overrides fields of the header's source record (rebuild keeps the original
    file's name and path when it builds from the embedded bytes). `calibration`: a path to
    calibration data the build reads outside the config (an fp16 build's overflow check).
    Overflow, stopped-tuning, erased-tensor and unquantized-attention warnings are printed as
    "warning: ..." lines once the progress display is gone.

    Engine.save writes a temporary file and renames it, so a failure here leaves no
    partial engine at `out` (and an older file there untouched).
    """
    import kiln
    from kiln.compiler.tuning_pass import TuningStoppedWarning
    from kiln.precision.erasing_scales import ErasedTensorWarning
    from kiln.precision.overflow import Fp16OverflowWarning
    from kiln.precision.quantize_attention_inputs import AttentionNotQuantizedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Fp16OverflowWarning)
        with progress_display(label) as say:
            engine = kiln.build(model, config, progress=say, calibration=calibration)
            if source:
                engine.header["source"].update(source)
            say("writing engine")
            engine.save(out)
    for w in caught:
        if issubclass(w.category, (Fp16OverflowWarning, TuningStoppedWarning, ErasedTensorWarning,
                                   AttentionNotQuantizedWarning)):
            output.stderr().print(f"warning: {w.message}", markup=False)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return engine, out.stat().st_size


@click.command("build")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "--saveEngine", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the engine (.kiln).")
@click.option("--fp16", is_flag=True, help="Compute in float16 (same as --precision fp16).")
@click.option("--bf16", is_flag=True, help="Compute in bfloat16 (same as --precision bf16).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Compute precision of float tensors [default: fp32]; tf32 is fp32 with TF32 tensor-core math "
                   "on CUDA. Inputs and outputs keep the model's types.")
@click.option("--int8", is_flag=True,
              help="Run the matmuls and convolutions on int8 with calibrated activation ranges, the rest in fp32 "
                   "(same as --precision int8); needs --calib-data or a usable --calib-cache.")
@click.option("--fp8", is_flag=True,
              help="Run the matmuls and convolutions on float8 e4m3 with calibrated activation ranges, the rest in "
                   "fp32 (same as --precision fp8; CPU reference arithmetic for now); needs --calib-data or a usable "
                   "--calib-cache.")
@click.option("--calib-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Calibration inputs: an .npz keyed by input name (axis 0 the samples) or a folder of "
                   ".npz/.npy files, one batch each. int8/fp8 calibrate on them; fp16 keeps the layers that "
                   "overflow fp16 on them in fp32.")
@calibration_method_options
@smooth_quant_option
@click.option("--weight-scales", "weight_scales", type=click.Choice(WEIGHT_SCALES), default="channel",
              show_default=True,
              help="Scales of the --int8/--fp8 weights: one per output channel, or one per weight (tensor: "
                   "TensorRT-LLM's FP8 recipe, which lets cuBLASLt's fastest fp8 GEMMs run; check the accuracy "
                   "with kiln compare).")
@click.option("--weight-rounding", "weight_rounding", type=click.Choice(WEIGHT_ROUNDINGS), default="nearest",
              show_default=True,
              help="How the --int8/--fp8 weights become codes: each to its nearest, or GPTQ (the codes "
                   "that move the layer's outputs on the calibration data least; same kernels and speed, needs "
                   "--calib-data or a --calib-cache a GPTQ build wrote).")
@click.option("--quantize-attention", "quantize_attention", is_flag=True,
              help="--int8/--fp8: attention's Q, K and V become 8-bit codes too (the Q/K/V projection writes 8 "
                   "bits, the attention kernel reads them; 8-bit precision in Q K^T and V: check with kiln "
                   "compare).")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Activation ranges reused when made for this model and method (from `kiln calibrate` or an "
                   "earlier build), else calibrated and written here.")
@click.option("--layer-precision", "layer_precision", multiple=True, metavar="NAME_OR_PATTERN=PRECISION",
              help="Keep the layers whose ONNX node name matches (exactly or as a glob such as 'encoder/*'; fused "
                   "layers by their source names) in fp32, fp16 or bf16; repeatable, earlier rules win.")
@click.option("--accuracy-budget", "accuracy_budget", metavar="METRIC=VALUE", default=None,
              help="Keep the fewest layers in a wider type (found by building with each one reduced alone) so "
                   "that the fp16/bf16/int8/fp8 engine stays within this budget of an fp32 engine on synthetic or "
                   "calibration inputs: cosine=0.999 (min over outputs), max_abs=1e-2 or mean_abs=1e-3. Kept "
                   "layers compute in fp32, or in an int8/fp8 engine's float precision (--fp16/--bf16) when "
                   "that meets the budget.")
@click.option("--budget-batches", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Batches the accuracy budget is measured on [default: {BUDGET_BATCHES}]: the first "
                   "calibration batches (int8/fp8), else synthetic ones. More give a plan that holds more surely "
                   "on other inputs; each search build then runs on each of them.")
@click.option("--strongly-typed", is_flag=True,
              help="Keep exactly the types the ONNX graph states (no conversion; precision fp32 or tf32).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Target device; auto picks CUDA when a GPU is present.")
@click.option("--shapes", metavar="NAME:DIMS[,...]",
              help="Static shapes for inputs with dynamic dims, e.g. input:8x3x224x224.")
@click.option("--min-shapes", "--minShapes", "min_shapes", metavar="NAME:DIMS[,...]",
              help="Smallest shapes of a dynamic range (needs --opt-shapes and --max-shapes).")
@click.option("--opt-shapes", "--optShapes", "opt_shapes", metavar="NAME:DIMS[,...]",
              help="Shapes to optimize for within the range.")
@click.option("--max-shapes", "--maxShapes", "max_shapes", metavar="NAME:DIMS[,...]",
              help="Largest shapes of a dynamic range.")
@click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the IR after each optimization pass into this folder.")
@click.option("--no-embed-source", is_flag=True,
              help="Leave the source ONNX out of the engine (smaller file; `kiln rebuild` then needs --onnx).")
@click.option("--timing-cache", "--timingCacheFile", "timing_cache", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Reuse tactic timings from this JSON file and add the new ones (created if absent).")
@click.option("--no-tune", is_flag=True,
              help="Skip timing tactics on the GPU: take the first supported one per layer (faster build).")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON on stdout.")
def build(model: Path, out: Path, fp16: bool, bf16: bool, precision: str | None, int8: bool, fp8: bool,
          calib_data: Path | None, calib_method: str, calib_percentile: float, calib_batch_size: int,
          smooth_quant: float | str | None, weight_scales: str, weight_rounding: str, quantize_attention: bool,
          calib_cache: Path | None, layer_precision: tuple[str, ...], accuracy_budget: str | None,
          budget_batches: int | None, strongly_typed: bool, device: str, shapes: str | None,
          min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None,
          dump_ir: Path | None, no_embed_source: bool, timing_cache: Path | None, no_tune: bool,
          as_json: bool) -> None:
    """Compile MODEL (an .onnx file) into an engine for this machine and write it to -o.

    Inputs with dynamic dims need shapes: --shapes for one static shape, or
    --min-shapes/--opt-shapes/--max-shapes for a range (trtexec's --minShapes etc. are
    accepted too). On a GPU each layer's candidate tactics are timed at the opt shapes and
    the fastest correct one is kept (--no-tune skips this; --timing-cache reuses timings
    across builds). --int8 (--fp8) quantizes the calibrated matmuls and convolutions (give
    --calib-data, or a --calib-cache from `kiln calibrate`). --fp16 with --calib-data checks
    the data for fp16 overflow and keeps the layers concerned in fp32, with a warning naming
    each. On failure nothing is written.
    """
    profiles = profile_from_options(shapes, min_shapes, opt_shapes, max_shapes)
    if dump_ir is not None:
        dump_ir.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.is_dir():
        raise KilnError(f"the output path {str(out)!r} is a folder; give a file name such as model.kiln.")
    from kiln.compiler.accuracy_budget import parse_budget

    if budget_batches is not None and accuracy_budget is None:
        raise KilnError(f"--budget-batches {budget_batches} sets how many batches an accuracy budget is measured "
                        "on, but no --accuracy-budget is given; add one (e.g. --accuracy-budget cosine=0.999) or "
                        "drop --budget-batches.")

    chosen, _, float_precision = precision_from_flags(fp16, bf16, precision, int8, fp8).partition("+")
    # fp16 reads --calib-data for its overflow check, outside the config (which keeps calib_data for
    # the calibrated precisions); any other precision gets the config's error for it.
    overflow_data = str(calib_data) if calib_data is not None and chosen == "fp16" else None
    config = BuildConfig(precision=chosen, float_precision=float_precision or "fp32", device=device,
                         calib_data=str(calib_data) if calib_data is not None and overflow_data is None else None,
                         calib_method=calib_method,
                         calib_percentile=calib_percentile, calib_batch_size=calib_batch_size,
                         smooth_quant=smooth_quant, weight_scales=weight_scales,
                         weight_rounding=weight_rounding, quantize_attention=quantize_attention,
                         calib_cache=None if calib_cache is None else str(calib_cache),
                         layer_precision=layer_rules_from_options(layer_precision),
                         accuracy_budget=None if accuracy_budget is None else parse_budget(accuracy_budget),
                         budget_batches=BUDGET_BATCHES if budget_batches is None else budget_batches,
                         strongly_typed=strongly_typed, profiles=profiles, dump_ir=None if dump_ir is None else str(dump_ir),
                         embed_source=not no_embed_source, tune=not no_tune,
                         timing_cache=None if timing_cache is None else str(timing_cache))
    engine, size = build_and_save(model, config, out, calibration=overflow_data)
    info = summary(engine, out, size)
    if as_json:
        output.emit_json(info)
    else:
        print_summary(info)

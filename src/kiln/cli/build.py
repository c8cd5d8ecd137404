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
from kiln.cli.calib_options import calibration_method_options, smooth_quant_option
from kiln.cli.shapes import parse_shapes
from kiln.config import DEVICES, LAYER_PRECISIONS, PRECISIONS, WEIGHT_SCALES, BuildConfig, Profile
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
    Overflow and stopped-tuning warnings are printed as "warning: ..." lines once the progress
    display is gone.

    Engine.save writes a temporary file and renames it, so a failure here leaves no
    partial engine at `out` (and an older file there untouched).
    """
    import kiln
    from kiln.compiler.tuning_pass import TuningStoppedWarning
    from kiln.precision.overflow import Fp16OverflowWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Fp16OverflowWarning)
        with progress_display(label) as say:
            engine = kiln.build(model, config, progress=say, calibration=calibration)
            if source:
                engine.header["source"].update(source)
            say("writing engine")
            engine.save(out)
    for w in caught:
        if issubclass(w.category, (Fp16OverflowWarning, TuningStoppedWarning)):
            output.stderr().print(f"warning: {w.message}", markup=False)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return engine, out.stat().st_size


def summary(engine: Engine, out: Path, size: int) -> dict[str, Any]:
    header = engine.header
    return {
        "engine": str(out),
        "source": header["source"]["name"],
        "source_nodes": header["build"]["source_nodes"],
        "layers": len(engine.plan.steps),
        "precision": header["build_config"]["precision"] + (
            f" (float layers {fp})" if (fp := header["build_config"].get("float_precision", "fp32")) != "fp32" else ""),
        "strongly_typed": header["build_config"].get("strongly_typed", False),
        "layer_precision": header["build"].get("precision", {}).get("layers", []),
        "device": {"kind": header["device"]["kind"], "name": header["device"].get("name")},
        "profiles": header["build_config"]["profiles"],
        "build_seconds": header["build"]["seconds"],
        "engine_bytes": size,
        "peak_activation_bytes": engine.plan.memory.peak_bytes,
        "total_activation_bytes": engine.plan.memory.total_bytes,
        "passes": header["build"]["passes"],
        "tuning": header["build"].get("tuning"),
        "int8": header["build"].get("int8"),
        "fp8": header["build"].get("fp8"),
        "fp16_overflow": header["build"].get("fp16_overflow"),
        "accuracy_budget": header["build"].get("accuracy_budget"),
        "explicit_quantization": explicit_quantization(engine),
    }


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def explicit_quantization(engine: Engine) -> dict[str, Any] | None:
    """What the plan made of the model's own QuantizeLinear/DequantizeLinear (a build that did not
    calibrate, with quantized layers): the layers by op, the residual blocks folded into a conv
    (passes/fuse_qdq_residual.py: kiln::QConv with mid_scale), the Q/DQ steps left alone and the
    element-wise kernels with Q/DQ inside; None otherwise."""
    build = engine.header["build"]
    steps = engine.plan.steps
    layers: dict[str, int] = {}
    for s in steps:
        if s.op in ("kiln::QConv", "kiln::QMatMul"):
            layers[s.op] = layers.get(s.op, 0) + 1
    if build.get("int8") or build.get("fp8") or not layers:
        return None
    from kiln.kernels.reference.quantized import QCONV_INPUTS

    mid = QCONV_INPUTS.index("mid_scale")
    return {"layers": layers,
            "residual_blocks": sum(1 for s in steps if s.op == "kiln::QConv" and len(s.inputs) > mid
                                   and s.inputs[mid] is not None),
            "qdq_steps": sum(1 for s in steps if s.op in QDQ_OPS),
            "qdq_pointwise": sum(1 for s in steps if s.op == "kiln::Pointwise"
                                 and any(i[0] in QDQ_OPS for i in s.attrs.get("program", [])))}


def explicit_line(info: dict[str, Any]) -> str:
    """E.g. "53 layer(s) from the model's Q/DQ (kiln::QConv 53), 16 residual block(s) in their conv;
    1 Q/DQ step(s) and 0 element-wise Q/DQ kernel(s) left"."""
    layers = info["layers"]
    return (f"{sum(layers.values())} layer(s) from the model's Q/DQ ("
            + ", ".join(f"{op} {n}" for op, n in sorted(layers.items())) + ")"
            + (f", {info['residual_blocks']} residual block(s) in their conv" if info["residual_blocks"] else "")
            + f"; {info['qdq_steps']} Q/DQ step(s) and {info['qdq_pointwise']} element-wise Q/DQ kernel(s) left")


def print_summary(info: dict[str, Any]) -> None:
    dev = info["device"]
    output.stdout().print(output.key_values("engine built", [
        ("engine", info["engine"]),
        ("layers", f"{info['source_nodes']} source nodes -> {info['layers']} engine layers"),
        ("precision", precision_line(info["precision"], info["strongly_typed"], info["layer_precision"])),
        ("device", f"{dev['kind']} ({dev['name']})" if dev["name"] else dev["kind"]),
        ("build time", f"{info['build_seconds']:.2f} s"),
        *([("int8", int8_line(info["int8"]))] if info.get("int8") else []),
        *([("fp8", int8_line(info["fp8"]))] if info.get("fp8") else []),
        *([("quantization", explicit_line(info["explicit_quantization"]))] if info.get("explicit_quantization")
          else []),
        *([("fp16 overflow", overflow_line(info["fp16_overflow"]))] if info.get("fp16_overflow") else []),
        *([("accuracy budget", budget_line(info["accuracy_budget"]))] if info.get("accuracy_budget") else []),
        ("tuning", _tuning_line(info["tuning"])),
        ("engine size", output.fmt_bytes(info["engine_bytes"])),
        ("peak activations", f"{output.fmt_bytes(info['peak_activation_bytes'])} planned "
                             f"(of {output.fmt_bytes(info['total_activation_bytes'])} if none were reused)"),
    ]))


def precision_line(precision: str, strongly_typed: bool, layers: list[dict[str, str]]) -> str:
    """E.g. "fp16; 2 layers in another precision (fp32: 2)"; the layers are in --json and `kiln inspect`."""
    text = precision + (" (strongly typed: the model's types as stated)" if strongly_typed else "")
    if layers:
        counts: dict[str, int] = {}
        for l in layers:
            counts[l["precision"]] = counts.get(l["precision"], 0) + 1
        text += (f"; {len(layers)} layer(s) in another precision ("
                 + ", ".join(f"{p}: {n}" for p, n in sorted(counts.items())) + ")")
    return text


def int8_line(int8: dict[str, Any]) -> str:
    """E.g. "3 layers quantized, 1 kept float (see --json); ranges: entropy, calibrated on 2 batches"."""
    calib = int8["calibration"]
    where = (f"from the cache {calib['cache']}" if calib["source"] == "cache"
             else f"calibrated on {calib['batches']} batch(es)" + (f", cached in {calib['cache']}" if calib["cache"] else ""))
    kept = len(int8["kept_float"])
    folded = int8.get("requantize_folded", 0)
    norms, matmuls = int8.get("norm_quantize_fused", 0), int8.get("matmul_quantize_fused", 0)
    inputs = int8.get("input_quantize_fused", 0)
    residuals, attention = int8.get("residuals_quantized", 0), int8.get("attention_requantized", 0)
    return (f"{len(int8['quantized'])} layer(s) quantized" + (f", {kept} kept float (see --json)" if kept else "")
            + (f", {folded} requantizing their output" if folded else "")
            + (f", {residuals} reading an 8-bit residual" if residuals else "")
            + (f", {attention} attention(s) writing 8 bits" if attention else "")
            + (f", {norms} norm(s) quantizing their output" if norms else "")
            + (f", {matmuls} float matmul(s) quantizing their output" if matmuls else "")
            + (f", {inputs} conv(s) quantizing their float input" if inputs else "")
            + f"; ranges: {calib['method']}, {where}"
            + (f"; SmoothQuant alpha {sq['alpha']}: {len(sq['smoothed'])} activation(s) smoothed"
               if (sq := int8.get("smooth_quant")) else "")
            + ("; weight scales per tensor" if int8.get("weight_scales") == "tensor" else ""))


def overflow_line(overflow: dict[str, Any]) -> str:
    """E.g. "2 layer(s) kept in fp32 (mm1: max 1.2e+06, ...) on 4 calibration batch(es)"."""
    kept = overflow["kept_fp32"]
    names = ", ".join(f"{k['layer']}: max {k['amax']:.3g}" for k in kept[:4]) + (" ..." if len(kept) > 4 else "")
    text = (f"{len(kept)} layer(s) kept in fp32" + (f" ({names})" if kept else "")
            + f" on {overflow['batches']} calibration batch(es)")
    if overflow["overridden"]:
        text += f"; {len(overflow['overridden'])} overflowing layer(s) kept in fp16 by --layer-precision"
    return text


def budget_line(budget: dict[str, Any]) -> str:
    """E.g. "cosine=0.9995 (target 0.999): 2 layer(s) kept in fp16 of 40 ranked, 48 builds; runs in
    0.41 ms, 1.21x the fp16 engine's 0.496 ms" (the speed when the build tuned on a GPU)."""
    kept = ", ".join(k["layer"] for k in budget["kept"][:4]) + (" ..." if len(budget["kept"]) > 4 else "")
    achieved = budget["achieved"]
    achieved = f"{achieved:.6g}" if isinstance(achieved, float) else achieved  # "inf"/"-inf" come as strings
    speed = budget.get("speed")
    return (f"{budget['metric']}={achieved} (target {budget['target']}): {len(budget['kept'])} layer(s) "
            f"kept in {budget.get('kept_precision', 'fp32')} of {budget['candidates']} ranked, {budget['builds']} "
            "builds" + (f" ({kept})" if kept else "")
            + (f"; runs in {speed['engine_ms']:.4g} ms, {speed['speedup']:.2f}x the {speed['wider_precision']} "
               f"engine's {speed['wider_ms']:.4g} ms" if speed else ""))


def _tuning_line(tuning: Any) -> str:
    if not isinstance(tuning, dict):
        return str(tuning or "off")
    if "skipped" in tuning:
        return f"skipped: {tuning['skipped']}"
    rejected = tuning.get("rejected_count", len(tuning.get("rejected", ())))
    return (f"{tuning['layers_timed']} layers timed in {tuning['seconds']:.2f} s, {tuning['cache_hits']} from the "
            f"timing cache" + (f"; {rejected} candidate(s) rejected (see --json)" if rejected else "")
            + (f"; stopped early: {tuning['stopped']}" if tuning.get("stopped") else ""))


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
          smooth_quant: float | str | None, weight_scales: str,
          calib_cache: Path | None, layer_precision: tuple[str, ...], accuracy_budget: str | None,
          strongly_typed: bool, device: str, shapes: str | None, min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None,
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

    chosen, _, float_precision = precision_from_flags(fp16, bf16, precision, int8, fp8).partition("+")
    # fp16 reads --calib-data for its overflow check, outside the config (which keeps calib_data for
    # the calibrated precisions); any other precision gets the config's error for it.
    overflow_data = str(calib_data) if calib_data is not None and chosen == "fp16" else None
    config = BuildConfig(precision=chosen, float_precision=float_precision or "fp32", device=device,
                         calib_data=str(calib_data) if calib_data is not None and overflow_data is None else None,
                         calib_method=calib_method,
                         calib_percentile=calib_percentile, calib_batch_size=calib_batch_size,
                         smooth_quant=smooth_quant, weight_scales=weight_scales, calib_cache=None if calib_cache is None else str(calib_cache),
                         layer_precision=layer_rules_from_options(layer_precision),
                         accuracy_budget=None if accuracy_budget is None else parse_budget(accuracy_budget),
                         strongly_typed=strongly_typed, profiles=profiles, dump_ir=None if dump_ir is None else str(dump_ir),
                         embed_source=not no_embed_source, tune=not no_tune,
                         timing_cache=None if timing_cache is None else str(timing_cache))
    engine, size = build_and_save(model, config, out, calibration=overflow_data)
    info = summary(engine, out, size)
    if as_json:
        output.emit_json(info)
    else:
        print_summary(info)

"""Explicitly quantized models through kiln: a benchmark model (ResNet-50 by default) quantized by
onnxruntime.quantization.quantize_static (QDQ or QOperator format, per-channel int8 weights, uint8 or int8
activations with zero points: what a user brings from ONNX Runtime), with --qat as PyTorch's
quantization toolkits for TensorRT export it (benchmarks/qat_export.py: symmetric int8 Q/DQ on every
conv's and linear's input and weight, BatchNorm after each quantized conv), with --fp8 as ModelOpt
exports FP8 (benchmarks/fp8_qdq_export.py: float8 Q/DQ), with --dynamic as quantize_dynamic writes it
(int8 weights, activations quantized at run time by DynamicQuantizeLinear), built by kiln and timed in one process
against kiln's own calibrated int8 (and fp8) engine and kiln fp16, all on the same inputs.

    PYTHONPATH=src python benchmarks/qdq_ort.py [--model resnet50|bert_base|minilm] [--batch 64] \
        [--activations QUInt8,QInt8] [--formats QDQ,QOperator] [--calib-samples 64] [--no-calibrated] [--qat] [--fp8] \
        [--dynamic] [--qdq-precisions fp16,fp32] [--exclude NODE,NODE,...]
    PYTHONPATH=src python benchmarks/qdq_ort.py --device cpu --batch 2 --calib-samples 4   # builds and accuracy only

Every model gets the same calibration samples (benchmarks/samples.py: ONNX Runtime's calibrator
reads them in batches, kiln's int8 build too) and is checked on other samples against PyTorch
fp32 (cosine per sample, min and mean) before it is timed (CUDA graph replays, median of 5 x 20).
Each engine's line says how many of its convolutions run on the Triton kernels and how many
stayed on the reference (the engine's float parts in fp16: kiln's --fp16 on the QDQ model; with
--qdq-precisions fp16,fp32 each explicit model is also built in kiln's default fp32).
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from benchmarks import models, samples  # noqa: E402
from benchmarks.accuracy_metrics import row_cosines  # noqa: E402
from benchmarks.budget_plan import graph_ms  # noqa: E402
from kiln.config import BuildConfig, Profile  # noqa: E402


def ort_qdq(path: Path, feeds: list[dict[str, np.ndarray]], activations: str, folder: Path,
            fmt: str = "QDQ", exclude: list[str] | None = None) -> Path:
    """`path` quantized by ONNX Runtime (format `fmt` QDQ|QOperator, per-channel int8 weights,
    `activations` QUInt8|QInt8; the nodes named in `exclude` left in float)."""
    from onnxruntime import quantization as quant

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
            return next(self.it, None)

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{path.stem}.{fmt.lower()}_{activations.lower()}.onnx"
    quant.quantize_static(str(path), str(out), Reader(), quant_format=getattr(quant.QuantFormat, fmt), per_channel=True,
                          weight_type=quant.QuantType.QInt8, activation_type=getattr(quant.QuantType, activations),
                          nodes_to_exclude=exclude)
    return out


def ort_dynamic(path: Path, folder: Path, per_channel: bool = False) -> Path:
    """`path` quantized by ONNX Runtime's quantize_dynamic (int8 weights, per tensor unless
    `per_channel`; uint8 activations quantized at run time: DynamicQuantizeLinear -> MatMulInteger)."""
    from onnxruntime import quantization as quant

    out = folder / f"{path.stem}.dynamic{'_per_channel' if per_channel else ''}.onnx"
    quant.quantize_dynamic(str(path), str(out), weight_type=quant.QuantType.QInt8, per_channel=per_channel)
    return out


# Steps whose reference tactic is a view or a host computation, not a kernel kiln lacks.
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Transpose", "Split"})


def on_reference(step) -> bool:  # noqa: ANN001 - a plan Step
    """A device step that runs the reference implementation (no kernel applied, or the tuner
    rejected every kernel's output): the layers that cost an explicitly quantized model its speed."""
    return step.tactic.endswith(".reference") and not step.host and step.op not in LAYOUT_OPS


def qat_onnx(model: models.BenchModel, feeds: list[dict[str, np.ndarray]], folder: Path) -> Path:
    """`model` fake-quantized by benchmarks/qat_export.py's recipe, calibrated on `feeds`, exported."""
    import copy
    import warnings

    from benchmarks.qat_export import qat_model

    names = model.input_names
    batches = [tuple(torch.from_numpy(f[n]) for n in names) for f in feeds]
    module = qat_model(copy.deepcopy(model.export_module).float().cpu(), batches)
    out = folder / f"{model.name}.qat.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation warning
        torch.onnx.export(module, batches[0], str(out), dynamo=False, opset_version=17, input_names=list(names),
                          output_names=[model.output_name],
                          dynamic_axes={n: {0: "batch"} for n in (*names, model.output_name)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(models.MODELS), default="resnet50")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--activations", default="QUInt8,QInt8", help="ONNX Runtime activation types to build")
    ap.add_argument("--formats", default="QDQ", help="ONNX Runtime quantization formats: QDQ, QOperator or both")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--eval-samples", type=int, default=0, help="default: one batch")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=True,
                    help="also build kiln's own calibrated int8 engine (the longest build)")
    ap.add_argument("--exclude", default="",
                    help="nodes ONNX Runtime's quantize_static leaves in float (comma list), e.g. the nodes_to_exclude "
                         "kiln's build warning names where the model's own quantization erases a tensor")
    ap.add_argument("--dynamic", action="store_true",
                    help="also build ONNX Runtime's quantize_dynamic model (run-time activation scales)")
    ap.add_argument("--qat", action="store_true", help="also build the QAT-style export (qat_export.py)")
    ap.add_argument("--fp8", action="store_true",
                    help="also build the ModelOpt-style FP8 Q/DQ model (fp8_qdq_export.py) and, unless "
                         "--no-calibrated, kiln's calibrated fp8 engine")
    ap.add_argument("--qdq-precisions", default="fp16",
                    help="engine precisions the explicitly quantized models build in: fp16 (TensorRT's --int8 "
                         "--fp16: their float layers in 16 bits), fp32 (kiln's default), or both")
    ap.add_argument("--timing-cache", default=None,
                    help="a timing cache file every build reads and extends (profile_steps.py uses /tmp/tc.json): "
                         "a later build of the same layers skips their tuning")
    args = ap.parse_args()
    t0 = time.time()
    say = lambda msg: print(f"[{time.time() - t0:5.0f} s] {msg}", flush=True)  # noqa: E731
    model = models.MODELS[args.model](0)
    folder = Path(tempfile.mkdtemp(prefix="kiln-qdq-"))
    path = models.export_onnx(model, Path("/tmp/bench"))
    calib = samples.calibration_feeds(model, args.calib_samples, args.batch, 0)
    evals = samples.make(model, args.eval_samples or args.batch, 0, "evaluation")
    inputs = {n: evals[n][:args.batch] for n in model.input_names}
    with torch.no_grad():
        reference = model.module.float()(*inputs.values()).numpy()
    feeds = {n: v.to(args.device) for n, v in inputs.items()}
    profile = (Profile.from_ranges(models.profile_ranges(model, [args.batch])),)
    tc = {"timing_cache": args.timing_cache} if args.timing_cache else {}
    # fp16: the float model's engine, and an explicit model's float parts
    fp16 = BuildConfig(precision="fp16", device=args.device, profiles=profile, **tc)
    builds = [("kiln fp16", path, fp16, None)]
    if args.calibrated:
        builds.append(("kiln int8 (calibrated)", path, BuildConfig(precision="int8", float_precision="fp16",
                                                                   device=args.device, profiles=profile, **tc), calib))
    explicit = {p: replace(fp16, precision=p) for p in args.qdq_precisions.split(",") if p}
    tag = lambda p: "" if p == "fp16" else f" ({p} engine)"  # noqa: E731
    for fmt in (f for f in args.formats.split(",") if f):
        for act in (a for a in args.activations.split(",") if a):
            qdq = ort_qdq(path, calib, act, folder, fmt, exclude=[n for n in args.exclude.split(",") if n] or None)
            say(f"ONNX Runtime quantized ({fmt}, {act} activations): {qdq.name}")
            builds += [(f"ONNX Runtime {fmt}, {act}{tag(p)}", qdq, config, None) for p, config in explicit.items()]
    if args.dynamic:
        dyn = ort_dynamic(path, folder)
        say(f"ONNX Runtime quantize_dynamic: {dyn.name}")
        builds += [(f"ONNX Runtime dynamic{tag(p)}", dyn, config, None) for p, config in explicit.items()]
    if args.fp8:
        from benchmarks.fp8_qdq_export import fp8_qdq

        if args.calibrated:
            builds.append(("kiln fp8 (calibrated)", path, BuildConfig(precision="fp8", float_precision="fp16",
                                                                      device=args.device, profiles=profile, **tc),
                           calib))
        q8 = fp8_qdq(path, calib, folder / f"{model.name}.fp8_qdq.onnx")
        say(f"ModelOpt-style FP8 Q/DQ (fp8_qdq_export.py): {q8.name}")
        builds += [(f"FP8 Q/DQ model{tag(p)}", q8, config, None) for p, config in explicit.items()]
    if args.qat:
        qat = qat_onnx(model, calib, folder)
        say(f"QAT-style export (qat_export.py: symmetric int8 Q/DQ): {qat.name}")
        builds += [(f"QAT export{tag(p)}", qat, config, None) for p, config in explicit.items()]
    times = {}
    for label, model_path, config, calibration in builds:
        engine = kiln.build(str(model_path), config, calibration=calibration)
        out = engine.run_tensors(feeds, validate=False)[model.output_name].float().cpu().numpy()
        cos = row_cosines(out, reference)
        convs = collections.Counter(s.tactic.split(".", 1)[1] for s in engine.plan.steps if s.op == "kiln::QConv")
        attention = collections.Counter(f"{s.tactic.split('.', 1)[1]} {s.config}" for s in engine.plan.steps
                                        if s.op == "kiln::QDQAttention")
        ms = graph_ms(engine, feeds) if args.device == "cuda" else float("nan")
        times[label] = ms
        say(f"{label}: {ms:.3f} ms ({engine.cuda_graph_status}); cosine to PyTorch fp32 min {cos.min():.5f} "
            f"mean {cos.mean():.5f}; QConv tactics {dict(convs)}; QDQAttention {dict(attention)}; "
            f"{len(engine.plan.steps)} steps "
            f"{dict(collections.Counter(s.op for s in engine.plan.steps).most_common(6))}; on the reference: "
            f"{dict(collections.Counter(s.op for s in engine.plan.steps if on_reference(s)))}")
        del engine
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.device == "cuda":
        base = times["kiln fp16"]
        say("vs kiln fp16: " + ", ".join(f"{k} {base / v:.3f}x" for k, v in times.items() if k != "kiln fp16"))


if __name__ == "__main__":
    main()

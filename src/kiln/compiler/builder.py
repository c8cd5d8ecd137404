"""build(): the whole pipeline, in one direction.

onnx file -> load + validate -> profiles -> import (shape inference at the profile's
dims) -> supported-op check -> passes -> precision -> tactics + plan -> one run at the opt
shapes on synthetic inputs: on a GPU it tunes the tactics as it goes (tuning_pass.py),
elsewhere it only probes; both record real buffer sizes -> memory plan -> Engine.
An int8 or fp8 build (compiler/quantize_step.py) gets activation ranges between the passes and
precision (the calibration cache, else a calibration run of the optimised fp32 graph), quantizes
the calibrated layers (precision/int8.py, precision/fp8.py; with config.smooth_quant after
SmoothQuant, precision/smooth_quant.py; config.weight_rounding "gptq" rounds the matmul weights
by GPTQ, precision/gptq.py) and folds the QuantizeLinear between two of them
into the first (precision/fold_requantize.py; one after a MaxPool moves before it first,
precision/quantize_before_pool.py; a conv's residual is read quantized where that lets the
fold happen, precision/quantize_residuals.py; an attention's output QuantizeLinear moves into the
attention kernel, precision/quantize_attention_output.py; an explicitly quantized model's layers get the
same folds but the residual's) before the rest is typed fp32; once it is typed,
a QuantizeLinear of a LayerNorm's output moves into the norm (precision/fuse_norm_quantize.py), and so
does a residual add between Q/DQ pairs in front of it (precision/fuse_residual_norm.py), an
element-wise program of a quantized GEMM's codes into its epilogue as a table (precision/
fuse_code_table.py), one of a
float matmul's output (a layer kept wider) into the matmul (precision/fuse_matmul_quantize.py), one of a
folding conv's float input into the conv (precision/fuse_input_quantize.py). An fp16 build
given calibration data first runs it through the fp32 graph and keeps the layers that overflow
fp16 in fp32, with a warning naming each (precision/overflow.py).
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

import onnx
import torch

from kiln import __version__
from kiln.compiler.lower import lower, plan_memory
from kiln.compiler.profiles import resolve_profiles, symbol_bounds
from kiln.compiler.quantize_step import QUANTIZERS, calibrate_and_quantize, calibration_batch_size
from kiln.compiler.timer import CudaTimer, Timer
from kiln.compiler.timing_cache import TimingCache, environment
from kiln.compiler.tuner import TuneSettings
from kiln.compiler.tuning_pass import TuneOutcome, tune_plan
from kiln.runtime.synthetic import synthetic_inputs
from kiln.config import BuildConfig, Profile
from kiln.engine.device import fingerprint
from kiln.engine.plan import Plan
from kiln.errors import BuildError, UnsupportedOpError
from kiln.ir.graph import Graph
from kiln.onnx.importer import fix_input_dims, import_model
from kiln.onnx.load import check_model, load_model
from kiln.onnx.support import describe_unsupported, unsupported_nodes
from kiln.passes.pipeline import optimize
from kiln.ir import dtypes
from kiln.precision import apply_precision
from kiln.precision.policy import engine_compute_type
from kiln.precision.erasing_scales import warn_erasing_quantizers
from kiln.precision.fold_requantize import QUANTIZED_LAYERS, fold_requantize
from kiln.precision.quantize_before_pool import quantize_before_pool
from kiln.precision.quantize_attention_output import quantize_attention_output
from kiln.precision.fuse_input_quantize import fuse_input_quantize
from kiln.precision.fuse_qdq_attention import fuse_qdq_attention
from kiln.precision.fuse_matmul_quantize import fuse_matmul_quantize
from kiln.precision.fuse_norm_quantize import fuse_norm_quantize
from kiln.precision.fuse_residual_norm import fuse_residual_norm
from kiln.precision.fuse_code_table import fuse_code_table
from kiln.precision.overflow import Fp16OverflowWarning, OverflowReport, find_fp16_overflow
from kiln.runtime.engine import Engine, math_mode

Progress = Callable[[str], None]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BuildError("the build asks for device cuda but torch sees no CUDA GPU here; build on the GPU "
                         "machine, or pass --device cpu.")
    return device


@dataclass(frozen=True, slots=True)
class Frontend:
    """The model read, imported at the profiles' dims and optimised: what precision starts from."""
    source: bytes  # the serialized ONNX model (hashed for the engine and the calibration cache)
    source_name: str
    profiles: tuple[Profile, ...]
    graph: Graph
    passes: list[tuple[str, bool]]
    source_nodes: int


def optimized_graph(model: str | os.PathLike | onnx.ModelProto, config: BuildConfig, say: Progress) -> Frontend:
    """Load, check, import and optimise `model` (the build's steps before precision)."""
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        proto, source_name = model, model.graph.name or "model"
    else:
        say("loading ONNX")
        proto, source_name = load_model(model), str(model)
    source = proto.SerializeToString()
    profiles, dims = resolve_profiles(proto, config)

    say("importing")
    graph = import_model(fix_input_dims(proto, dims))
    graph.dim_bounds = symbol_bounds(profiles, dims)
    bad = unsupported_nodes(graph)
    if bad:
        raise UnsupportedOpError(describe_unsupported(bad))
    warn_erasing_quantizers(graph)   # the model's own Q/DQ pairs that erase a tensor (an attention mask's)
    n_source = len(graph.nodes)

    say("optimizing")
    dump = Path(config.dump_ir) if config.dump_ir else None
    passes = optimize(graph, dump_dir=dump, on_pass=lambda name, changed: say(f"pass {name}"))
    return Frontend(source, source_name, profiles, graph, passes, n_source)


def build(model: str | os.PathLike | onnx.ModelProto, config: BuildConfig | None = None,
          progress: Progress | None = None, timer: Timer | None = None,
          calibration: Iterable[Mapping[str, Any]] | str | os.PathLike | None = None, *,
          overflow: OverflowReport | None = None) -> Engine:
    """Compile an ONNX model (path or ModelProto) into an Engine for this machine's device.

    On CUDA the tactics are tuned (unless config.tune is off) with CUDA-event timings;
    `timer` replaces those, and makes a CPU build tune too (tests use a fake timer).
    `calibration`: calibration batches, feed dicts {input name: array} (or a path, as
    config.calib_data takes), used in place of config.calib_data: int8/fp8 builds calibrate on
    them, fp16 builds check them for fp16 overflow (`overflow`: the report of that check made
    by an earlier build of the same model on the same data, used instead of measuring again;
    the accuracy budget's search builds pass it). config.accuracy_budget first searches the
    layers to keep wider (compiler/accuracy_budget.py) and builds with them as layer
    precision rules."""
    config = config or BuildConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    budget, requested = None, config
    if config.accuracy_budget is not None:
        from kiln.compiler.accuracy_budget import search
        if calibration is not None and not isinstance(calibration, (str, os.PathLike)):
            calibration = list(calibration)  # read by the search and the build
        budget = search(model, replace(config, accuracy_budget=None), config.accuracy_budget,
                        calibration=calibration, progress=say)
        config = budget.config
    device = resolve_device(config.device)
    front = optimized_graph(model, config, say)
    source, source_name, profiles, graph, passes = front.source, front.source_name, front.profiles, front.graph, \
        front.passes
    quantized: dict[str, Any] | None = None  # the quantization report of an int8 or fp8 build
    if config.precision in QUANTIZERS:
        quantized = calibrate_and_quantize(graph, source, config, calibration, say)
    elif any(n.qualified_op in QUANTIZED_LAYERS for n in graph.nodes):
        # Explicit quantization: the same folds where the model's own Q/DQ left a QuantizeLinear
        # after a MaxPool or an attention (a QAT export quantizes each layer's input, not its output).
        quantize_before_pool(graph)
        fold_requantize(graph)
        quantize_attention_output(graph)
    if engine_compute_type(config) != dtypes.FLOAT16 or (calibration is None and config.calib_data is None):
        overflow = None
    else:
        if overflow is None:
            overflow = fp16_overflow(graph, config, calibration, say)
        else:
            say(f"fp16 overflow: {len(overflow.kept)} layer(s) kept in fp32 (an earlier check's report)")
        config = replace(config, layer_precision=config.layer_precision + overflow.rules())
    dump = Path(config.dump_ir) if config.dump_ir else None
    precision = apply_precision(graph, config)
    if overflow is not None:
        precision = overflow.explain(precision)
    counts = graph.op_counts()
    if quantized is not None or counts.get("kiln::QConv") or counts.get("kiln::QMatMul"):
        # Calibrated or explicit (QDQ) quantization, once the types are final: the norm kernels
        # quantize their own outputs,
        fuse_norm_quantize(graph)
        fuse_residual_norm(graph)    # and read a residual add quantized between Q/DQ (ONNX Runtime's) themselves
        fuse_code_table(graph)       # a GEMM's codes through a program of one 8-bit input: a table in its epilogue
        fuse_matmul_quantize(graph)  # a float matmul kept wider writes the next layer's 8-bit input,
        fuse_input_quantize(graph)   # a folding conv (ResNet's stem) quantizes its float input itself
        if quantized is not None:
            quantized["norm_quantize_fused"] = graph.op_counts().get("kiln::NormQuantize", 0)
            quantized["matmul_quantize_fused"] = graph.op_counts().get("kiln::MatMulQuantize", 0)
            quantized["input_quantize_fused"] = sum(1 for n in graph.nodes if n.attrs.get("x_dtype")
                                                    and n.qualified_op == "kiln::QConv")
    fuse_qdq_attention(graph)        # an attention with Q/DQ inside (ONNX Runtime's QDQ models): one layer
    if (precision.changed or quantized) and dump is not None:
        from kiln.ir import print_graph
        (dump / f"{len(passes) + 1:02d}_precision_{config.precision}.txt").write_text(print_graph(graph))

    say("selecting tactics")
    plan, consts = lower(graph, device)
    tune = config.tune and (timer is not None or device == "cuda")
    if tune:  # one run at the opt shapes: tactics timed and activation sizes recorded together
        outcome = _tune(plan, consts, device, profiles[0], config, timer, say, graph.layout, graph.dim_max)
        plan, probe = outcome.plan, outcome.sizes
    header = {
        "kiln_version": __version__,
        "build_config": {**config.to_json(), "device": device, "profiles": [p.to_json() for p in profiles]},
        "device": fingerprint(device),
        "source": {"name": Path(source_name).name, "sha256": hashlib.sha256(source).hexdigest(),
                   "embedded": config.embed_source, "path": str(Path(source_name).resolve())
                   if not isinstance(model, onnx.ModelProto) else None},
        "build": {"source_nodes": front.source_nodes, "passes": [[n, c] for n, c in passes],
                  "precision": precision.to_json()},
    }
    if quantized is not None:
        header["build"][config.precision] = quantized
    if overflow is not None:
        header["build"]["fp16_overflow"] = overflow.to_json()
    if budget is not None:
        header["build"]["accuracy_budget"] = budget.to_json()
    engine = Engine(plan, consts, header, device, source if config.embed_source else None)

    if tune:
        engine.header["build"]["tuning"] = outcome.summary
    else:
        engine.header["build"]["tuning"] = "off" if device == "cuda" else f"off (no tuning on {device})"
        probe = _probe_sizes(engine, profiles[0])
    say("planning memory")
    if isinstance(probe, str):
        engine.header["build"]["memory_plan"] = f"skipped: {probe}"
    else:
        engine.plan = engine.executor.plan = plan_memory(plan, probe)
    if budget is not None and tune:
        from kiln.compiler.plan_speed import plan_speed
        say("accuracy budget: timing the plan against the engine it would replace")
        speed = plan_speed(model, requested, engine, budget.kept_precision, timer or CudaTimer())
        engine.header["build"]["accuracy_budget"]["speed"] = speed.to_json()
    engine.header["build"]["seconds"] = round(time.perf_counter() - t0, 3)
    return engine


def fp16_overflow(graph: Graph, config: BuildConfig,
                  calibration: Iterable[Mapping[str, Any]] | str | os.PathLike | None, say: Progress) -> OverflowReport:
    """The layers of the optimised fp32 `graph` that overflow fp16 on the calibration data (the
    batches given, else config.calib_data), each announced with an Fp16OverflowWarning."""
    from kiln.calibration import calibration_batches

    batch, drop_last = calibration_batch_size(graph, config.calib_batch_size)
    data = calibration if calibration is not None else config.calib_data
    say("checking fp16 overflow on the calibration data")
    report = find_fp16_overflow(graph, calibration_batches(data, graph.inputs, batch, drop_last),
                                config.layer_precision)
    for message in report.warnings():
        warnings.warn(message, Fp16OverflowWarning, stacklevel=3)
    if report.kept:
        say(f"fp16 overflow: {len(report.kept)} layer(s) kept in fp32")
    return report


def _tune(plan: Plan, consts: dict[str, torch.Tensor], device: str, profile: Profile, config: BuildConfig,
          timer: Timer | None, say: Progress, layout: str, dim_max: dict[str, int]) -> TuneOutcome:
    say("tuning")
    cache = TimingCache(config.timing_cache, environment(device)) if config.timing_cache else None
    # Time the kernels under the engine's math mode (fp32: TF32 off, tf32: on; runtime/engine.py).
    with math_mode(config.precision if device == "cuda" else None):
        return tune_plan(plan, consts, device, profile, timer or CudaTimer(), cache, say,
                         TuneSettings(tf32=config.precision == "tf32"), layout=layout, dim_max=dim_max)


def _probe_sizes(engine: Engine, profile) -> dict[int, int] | str:  # noqa: ANN001
    """Each activation's bytes from one run on synthetic inputs at the opt shapes, or why
    there is none: synthetic data is not valid input for every model (sequence inputs,
    shape tensors, indices that must be in range); the engine is built all the same."""
    plan = engine.plan
    if any(b.kind != "tensor" for b in plan.inputs):
        return "the engine has sequence or optional inputs"
    sizes: dict[int, int] = {}
    feeds = synthetic_inputs(plan.inputs, profile, "opt", engine.device)
    try:
        with torch.inference_mode():
            engine.executor.run({b.slot: feeds[b.name] for b in plan.inputs}, record_sizes=sizes,
                                device=engine.device)
    except Exception as exc:  # noqa: BLE001 - the probe is advisory
        return f"a run on synthetic inputs failed ({type(exc).__name__})"
    return sizes

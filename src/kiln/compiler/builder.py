"""build(): the whole pipeline, in one direction.

onnx file -> load + validate -> profiles -> import (shape inference at the profile's
dims) -> supported-op check -> passes -> precision -> tactics + plan -> one run at the opt
shapes on synthetic inputs: on a GPU it tunes the tactics as it goes (tuning_pass.py),
elsewhere it only probes; both record real buffer sizes -> memory plan -> Engine.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import onnx
import torch

from kiln import __version__
from kiln.compiler.lower import lower, plan_memory
from kiln.compiler.profiles import resolve_profiles
from kiln.compiler.timer import CudaTimer, Timer
from kiln.compiler.timing_cache import TimingCache, environment
from kiln.compiler.tuning_pass import TuneOutcome, tune_plan
from kiln.runtime.synthetic import synthetic_inputs
from kiln.config import BuildConfig, Profile
from kiln.engine.device import fingerprint
from kiln.engine.plan import Plan
from kiln.errors import BuildError, UnsupportedOpError
from kiln.onnx.importer import fix_input_dims, import_model
from kiln.onnx.load import check_model, load_model
from kiln.onnx.support import describe_unsupported, unsupported_nodes
from kiln.passes.pipeline import optimize
from kiln.precision import apply_precision
from kiln.runtime.engine import Engine, math_mode

Progress = Callable[[str], None]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BuildError("the build asks for device cuda but torch sees no CUDA GPU here; build on the GPU "
                         "machine, or pass --device cpu.")
    return device


def build(model: str | os.PathLike | onnx.ModelProto, config: BuildConfig | None = None,
          progress: Progress | None = None, timer: Timer | None = None) -> Engine:
    """Compile an ONNX model (path or ModelProto) into an Engine for this machine's device.

    On CUDA the tactics are tuned (unless config.tune is off) with CUDA-event timings;
    `timer` replaces those, and makes a CPU build tune too (tests use a fake timer)."""
    config = config or BuildConfig()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        proto, source_name = model, model.graph.name or "model"
    else:
        say("loading ONNX")
        proto, source_name = load_model(model), str(model)
    source = proto.SerializeToString()
    device = resolve_device(config.device)
    profiles, dims = resolve_profiles(proto, config)

    say("importing")
    graph = import_model(fix_input_dims(proto, dims))
    bad = unsupported_nodes(graph)
    if bad:
        raise UnsupportedOpError(describe_unsupported(bad))
    n_source = len(graph.nodes)

    say("optimizing")
    dump = Path(config.dump_ir) if config.dump_ir else None
    passes = optimize(graph, dump_dir=dump, on_pass=lambda name, changed: say(f"pass {name}"))
    precision = apply_precision(graph, config)
    if precision.changed and dump is not None:
        from kiln.ir import print_graph
        (dump / f"{len(passes) + 1:02d}_precision_{config.precision}.txt").write_text(print_graph(graph))

    say("selecting tactics")
    plan, consts = lower(graph, device)
    tune = config.tune and (timer is not None or device == "cuda")
    if tune:  # one run at the opt shapes: tactics timed and activation sizes recorded together
        outcome = _tune(plan, consts, device, profiles[0], config, timer, say, graph.layout)
        plan, probe = outcome.plan, outcome.sizes
    header = {
        "kiln_version": __version__,
        "build_config": {**config.to_json(), "device": device, "profiles": [p.to_json() for p in profiles]},
        "device": fingerprint(device),
        "source": {"name": Path(source_name).name, "sha256": hashlib.sha256(source).hexdigest(),
                   "embedded": config.embed_source, "path": str(Path(source_name).resolve())
                   if not isinstance(model, onnx.ModelProto) else None},
        "build": {"source_nodes": n_source, "passes": [[n, c] for n, c in passes],
                  "precision": precision.to_json()},
    }
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
    engine.header["build"]["seconds"] = round(time.perf_counter() - t0, 3)
    return engine


def _tune(plan: Plan, consts: dict[str, torch.Tensor], device: str, profile: Profile, config: BuildConfig,
          timer: Timer | None, say: Progress, layout: str) -> TuneOutcome:
    say("tuning")
    cache = TimingCache(config.timing_cache, environment(device)) if config.timing_cache else None
    # Time the kernels under the engine's math mode (fp32: TF32 off, tf32: on; runtime/engine.py).
    with math_mode(config.precision if device == "cuda" else None):
        return tune_plan(plan, consts, device, profile, timer or CudaTimer(), cache, say, layout=layout)


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

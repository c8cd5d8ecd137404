"""build(): the whole pipeline, in one direction.

onnx file -> load + validate -> profiles -> import (shape inference at the profile's
dims) -> supported-op check -> passes -> precision -> tactics + plan -> probe run at the
opt shapes (real buffer sizes) -> memory plan -> Engine.
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
from kiln.runtime.synthetic import synthetic_inputs
from kiln.config import BuildConfig
from kiln.engine.device import fingerprint
from kiln.errors import BuildError, UnsupportedOpError
from kiln.onnx.importer import fix_input_dims, import_model
from kiln.onnx.load import check_model, load_model
from kiln.onnx.support import describe_unsupported, unsupported_nodes
from kiln.passes.pipeline import optimize
from kiln.precision import apply_precision
from kiln.runtime.engine import Engine

Progress = Callable[[str], None]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BuildError("the build asks for device cuda but torch sees no CUDA GPU here; build on the GPU "
                         "machine, or pass --device cpu.")
    return device


def build(model: str | os.PathLike | onnx.ModelProto, config: BuildConfig | None = None,
          progress: Progress | None = None) -> Engine:
    """Compile an ONNX model (path or ModelProto) into an Engine for this machine's device."""
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
    if apply_precision(graph, config.precision) and dump is not None:
        from kiln.ir import print_graph
        (dump / f"{len(passes) + 1:02d}_precision_{config.precision}.txt").write_text(print_graph(graph))

    say("selecting tactics")
    plan, consts = lower(graph, device)
    header = {
        "kiln_version": __version__,
        "build_config": {**config.to_json(), "device": device, "profiles": [p.to_json() for p in profiles]},
        "device": fingerprint(device),
        "source": {"name": Path(source_name).name, "sha256": hashlib.sha256(source).hexdigest(),
                   "embedded": config.embed_source, "path": str(Path(source_name).resolve())
                   if not isinstance(model, onnx.ModelProto) else None},
        "build": {"source_nodes": n_source, "passes": [[n, c] for n, c in passes]},
    }
    engine = Engine(plan, consts, header, device, source if config.embed_source else None)

    say("planning memory")
    probe = _probe_sizes(engine, profiles[0])
    if isinstance(probe, str):
        engine.header["build"]["memory_plan"] = f"skipped: {probe}"
    else:
        engine.plan = engine.executor.plan = plan_memory(plan, probe)
    engine.header["build"]["seconds"] = round(time.perf_counter() - t0, 3)
    return engine


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

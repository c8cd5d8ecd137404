r"""One timed kiln build, for the suite's warm-timing-cache figure (benchmarks/builds.py).

Usage: python benchmarks/rebuild.py MODEL.onnx CONFIG.json
CONFIG.json: BuildConfig.to_json() plus the local options "timing_cache" and "calib_cache".
Prints one JSON object: {"seconds", "tuning", "plan_digest"}.

Run as a script it builds in a fresh process, as a later `kiln build --timing-cache` would:
nothing compiled or warmed up by the suite's own builds is in memory, only what the caches
on disk hold (the timing cache, the calibration cache, Triton's kernel cache). Before the
clock starts the process builds a tiny warm-up model (`warmup_model`: conv, matmul, softmax)
in the same precision: that makes the CUDA context and the cuBLAS/cuDNN handles and imports
kiln's lazily loaded modules, costs of a process rather than of a build, which the suite's
cold builds (in its long-lived process) do not pay either. The whole process's wall time is
reported beside the build's ("process_s").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # `python benchmarks/rebuild.py` puts benchmarks/ on the path
    sys.path.insert(0, str(REPO / "src"))

import kiln  # noqa: E402

LOCAL_OPTIONS = ("timing_cache", "calib_cache")  # BuildConfig fields that to_json leaves out


def config_to_json(config: kiln.BuildConfig) -> dict[str, Any]:
    return {**config.to_json(), **{k: getattr(config, k) for k in LOCAL_OPTIONS}}


def config_from_json(data: dict[str, Any]) -> kiln.BuildConfig:
    return dataclasses.replace(kiln.BuildConfig.from_json(data), **{k: data.get(k) for k in LOCAL_OPTIONS})


def plan_digest(engine: Any) -> str:
    """A digest of the engine's kernel choices: each step's tactic and config, in order."""
    steps = [[s.tactic, json.dumps(s.config, sort_keys=True, default=str)] for s in engine.plan.steps]
    return hashlib.sha256(json.dumps(steps).encode()).hexdigest()[:16]


def tuning_counts(engine: Any) -> dict[str, Any]:
    """The tuner's counts from the engine header: layers timed, timing-cache hits, timer calls."""
    tuning = engine.header["build"]["tuning"]
    if not isinstance(tuning, dict):
        return {"off": str(tuning)}
    return {k: tuning[k] for k in ("layers_timed", "cache_hits", "timer_calls", "seconds") if k in tuning}


def rebuild(model: str | Path, config: kiln.BuildConfig) -> dict[str, Any]:
    """Build `model` with `config` and say how long it took and what the tuner did."""
    t0 = time.perf_counter()
    engine = kiln.build(str(model), config)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tuning": tuning_counts(engine), "plan_digest": plan_digest(engine)}


def warmup_model() -> Any:
    """x [N, 3, 8, 8] -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax -> y [N, 4]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (8, 3, 3, 3)), ("fc", (8, 4)), ("bias", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "bias"], ["g"]), helper.make_node("Softmax", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "warmup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def warm_up(config: kiln.BuildConfig) -> None:
    """One build of warmup_model() like `config` but without its caches and profiles (module docstring).
    A calibrated precision warms up in fp16: the tiny model has no calibration data."""
    precision = "fp16" if config.precision in ("int8", "fp8") else config.precision
    kiln.build(warmup_model(), dataclasses.replace(config, precision=precision, profiles=(), timing_cache=None,
                                                   calib_cache=None, float_precision="fp32", smooth_quant=None,
                                                   weight_scales="channel"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, config_path = sys.argv[1:] if argv is None else argv
    config = config_from_json(json.loads(Path(config_path).read_text()))
    warm_up(config)
    result = {**rebuild(model, config), "process_s": time.perf_counter() - t0}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""compare(): run a kiln engine and a reference on the same inputs and measure how far apart
their outputs are (Polygraphy's `run --onnxrt --trt`).

Design note. The engine is given (an Engine or an engine file) or built from the model at
the requested precision. The reference is onnxruntime (CPU provider; imported only when
asked for) or a kiln fp32 engine of the same model, built statically at the inputs' shapes.
Inputs come from the caller (arrays by input name, checked against the model) or are
synthetic at the engine's opt shapes, seeded. With `all_layers`, every top-level node
output of the ONNX graph is made a graph output of the model both sides run (names are the
ONNX value names, so the engine is rebuilt even when one was given), and the report lists
the tensors in the graph's topological order: the first one that fails is where the
engine starts to diverge. An int8/fp8 engine is rebuilt with its stored options and
calibrated again on `calibration` (its calibration data: a path, as BuildConfig.calib_data
takes, or feed dicts); every tensor being an output, no quantized layer requantizes its
output or fuses across a tensor, so each one is compared in float where the engine itself
would hand the next layer 8-bit codes: where quantization error enters, not the last bit of
the engine's own kernels.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from kiln.accuracy.metrics import OutputMetrics, default_tolerances, output_metrics
from kiln.config import CALIBRATED_PRECISIONS, DEVICES, PRECISIONS, BuildConfig, Profile
from kiln.errors import InputError, KilnError

# Precisions compare can build itself (int8 and fp8 need calibration data: give a built engine instead).
COMPARABLE = tuple(p for p in PRECISIONS if p not in CALIBRATED_PRECISIONS)

if TYPE_CHECKING:
    import onnx
    import torch

    from kiln.runtime.engine import Engine

AGAINST = ("onnxruntime", "fp32")


@dataclass(frozen=True, slots=True)
class CompareReport:
    """Per-output metrics of one engine against one reference, and the verdict."""
    model: str
    engine: str  # the engine file, or how the engine was made
    precision: str  # the engine's compute precision
    against: str
    device: str
    atol: float
    rtol: float
    seed: int | None  # None when the inputs were given
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype)
    outputs: tuple[OutputMetrics, ...]  # in the graph's order (topological with all_layers)
    all_layers: bool = False
    skipped: tuple[str, ...] = ()  # outputs only one side produced, or not tensors

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def first_divergence(self) -> OutputMetrics | None:
        """The first tensor (in topological order) outside the tolerance; None when all pass."""
        return next((o for o in self.outputs if not o.passed), None)

    def worst(self, n: int) -> list[OutputMetrics]:
        """The n tensors furthest outside (or closest to) the tolerance, worst first."""
        key = lambda o: (o.tolerance_ratio if not math.isnan(o.tolerance_ratio) else math.inf)  # noqa: E731
        return sorted(self.outputs, key=key, reverse=True)[:n]

    def to_json(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "model": self.model, "engine": self.engine, "precision": self.precision, "against": self.against,
            "device": self.device, "atol": self.atol, "rtol": self.rtol, "seed": self.seed,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.inputs],
            "passed": self.passed, "all_layers": self.all_layers,
            "first_divergence": None if first is None else first.name,
            "outputs": [o.to_json() for o in self.outputs], "skipped": list(self.skipped),
        }


def compare(model_path: str | os.PathLike, engine: Engine | str | os.PathLike | None = None,
            precision: str = "fp32", against: str = "onnxruntime",
            feeds: Mapping[str, np.ndarray] | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
            seed: int = 0, atol: float | None = None, rtol: float | None = None, top_k: int | None = None,
            all_layers: bool = False, device: str = "auto",
            calibration: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None) -> CompareReport:
    """Compare a kiln engine with a reference on the same inputs; see the module's note.

    `engine` wins over `precision`/`device` (they are read from it). `feeds` (arrays by
    input name) and `shapes` (dims of synthetic inputs) exclude each other. atol/rtol
    default to the engine precision's (metrics.TOLERANCES)."""
    from kiln.onnx.load import load_model

    _check_options(precision, against, feeds, shapes, atol, rtol, top_k, device)
    proto = load_model(model_path)
    if feeds is not None:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        check_feeds(proto, feeds)
    if all_layers:
        proto = with_all_outputs(proto)
    kiln_engine, label = _engine(proto, engine, precision, device, shapes, feeds, rebuild=all_layers,
                                 calibration=calibration)
    precision = kiln_engine.header.get("build_config", {}).get("precision", precision)
    d_atol, d_rtol = default_tolerances(precision)
    atol, rtol = d_atol if atol is None else atol, d_rtol if rtol is None else rtol

    tensors, arrays = _inputs(kiln_engine, feeds, shapes or {}, seed)
    actual = run_engine(kiln_engine, tensors)
    if against == "onnxruntime":
        expected = run_onnxruntime(proto, arrays)
    else:
        ref = _build(proto, "fp32", kiln_engine.device.type, {k: v.shape for k, v in arrays.items()})
        expected = run_engine(ref, {k: t.cpu() for k, t in tensors.items()})

    order = _tensor_order(proto) if all_layers else [o.name for o in proto.graph.output]
    names = [n for n in order if isinstance(actual.get(n), np.ndarray) and isinstance(expected.get(n), np.ndarray)]
    skipped = tuple(n for n in dict.fromkeys([*order, *actual, *expected]) if n not in names)
    metrics = tuple(output_metrics(n, actual[n], expected[n], atol, rtol, top_k) for n in names)
    return CompareReport(
        model=str(model_path), engine=label, precision=precision, against=against,
        device=kiln_engine.device.type, atol=atol, rtol=rtol, seed=None if feeds is not None else seed,
        inputs=tuple((k, tuple(v.shape), str(v.dtype)) for k, v in arrays.items()),
        outputs=metrics, all_layers=all_layers, skipped=skipped)


def _check_options(precision: str, against: str, feeds: Any, shapes: Any, atol: float | None,
                   rtol: float | None, top_k: int | None, device: str) -> None:
    if precision not in COMPARABLE:
        raise InputError(f"precision {precision!r} cannot be built here; use one of {', '.join(COMPARABLE)} "
                         "(for an int8 engine, build it with `kiln build --int8 --calib-data ...` and pass --engine).")
    if against not in AGAINST:
        raise InputError(f"reference {against!r} is unknown; compare against one of {', '.join(AGAINST)}.")
    if device not in DEVICES:
        raise InputError(f"device {device!r} is unknown; use one of {', '.join(DEVICES)}.")
    if feeds is not None and shapes:
        raise InputError("shapes set the dims of synthetic inputs, but inputs were given (their own shapes are "
                         "used); give only one of them.")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if tol is not None and not (tol >= 0 and math.isfinite(tol)):
            raise InputError(f"{name} {tol} is not a finite number >= 0; give e.g. {name}=1e-3.")
    if top_k is not None and top_k < 1:
        raise InputError(f"top-k {top_k} must be at least 1 (1 compares each row's argmax).")


def check_feeds(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> None:
    """The arrays must name exactly the model's inputs, with their rank and fixed dims."""
    from kiln.compiler.profiles import model_input_dims

    inits = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    for n in feeds:
        if n not in names:
            raise InputError(f"the inputs hold an array named {n!r}, but the model has no such input; its inputs "
                             f"are {', '.join(names) or '(none)'}. Save the arrays under those names "
                             "(numpy.savez(path, input_name=array, ...)).")
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"the inputs lack an array for model input {missing[0]!r}; the model needs "
                         f"{', '.join(names)}. Add it to the .npz file.")
    for n, dims in model_input_dims(proto).items():
        shape = feeds[n].shape
        fixed = [(i, d) for i, d in enumerate(dims) if isinstance(d, int)]
        if len(shape) != len(dims) or any(shape[i] != d for i, d in fixed):
            raise InputError(f"input {n!r} has shape {list(shape)}, but the model declares {list(dims)} (a name "
                             "is a free dim); save an array of that shape.")


def with_all_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` in which every top-level node output is also a graph output (same names).

    Types come from ONNX shape inference where it knows them. Constant nodes are skipped:
    their values are weights, not computation."""
    import onnx

    from kiln.onnx.importer import infer_shapes

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    infos = {vi.name: vi for vi in infer_shapes(model).graph.value_info}
    have = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in _tensor_order(model):
        if name not in have:
            model.graph.output.append(infos.get(name) or onnx.ValueInfoProto(name=name))
            have.add(name)
    return model


def _tensor_order(proto: onnx.ModelProto) -> list[str]:
    """Node outputs in the graph's order (ONNX requires topological order), Constants skipped."""
    return [name for node in proto.graph.node
            if not (node.op_type == "Constant" and node.domain in ("", "ai.onnx"))
            for name in node.output if name]


def _engine(proto: onnx.ModelProto, engine: Engine | str | os.PathLike | None, precision: str, device: str,
            shapes: Mapping[str, Sequence[int]] | None, feeds: Mapping[str, np.ndarray] | None,
            rebuild: bool, calibration: Any = None) -> tuple[Engine, str]:
    """The engine to check and a label for the report; built unless given (and not `rebuild`)."""
    import kiln

    if engine is not None:
        label = str(engine) if isinstance(engine, (str, os.PathLike)) else "(engine object)"
        if isinstance(engine, (str, os.PathLike)):
            if not Path(engine).is_file():
                raise InputError(f"engine file {str(engine)!r} does not exist; build one with `kiln build MODEL "
                                 "-o ENGINE`, or leave out --engine to build it here.")
            engine = kiln.load(engine)
        if not rebuild:
            return engine, label
        # Intermediate tensors need outputs the given engine lacks: rebuild it the same way.
        stored = BuildConfig.from_json(engine.header.get("build_config", {}))
        if stored.precision in CALIBRATED_PRECISIONS and calibration is None:
            raise InputError(f"engine {label!r} is an {stored.precision} engine: --all-layers rebuilds it with every "
                             "tensor as an output, which calibrates it again; give its calibration data with "
                             "--calib-data PATH (an .npz keyed by input name, or a folder of .npz/.npy batches).")
        from kiln.precision.quantize_attention_inputs import AttentionNotQuantizedWarning
        with warnings.catch_warnings():   # every tensor an output: no attention fuses, as expected here
            warnings.simplefilter("ignore", AttentionNotQuantizedWarning)
            built = kiln.build(proto, replace(stored, device=engine.device.type, embed_source=False),
                               calibration=calibration)
        return built, f"{label} (rebuilt with every tensor as an output)"
    dims = dict(shapes) if shapes else ({k: v.shape for k, v in feeds.items()} if feeds else None)
    return _build(proto, precision, device, dims), f"built from the model ({precision})"


def _build(proto: onnx.ModelProto, precision: str, device: str,
           dims: Mapping[str, Sequence[int]] | None) -> Engine:
    import kiln

    profiles = (Profile.static({k: list(v) for k, v in dims.items()}),) if dims else ()
    return kiln.build(proto, BuildConfig(precision=precision, device=device, profiles=profiles,
                                         embed_source=False))


def _inputs(engine: Engine, feeds: Mapping[str, np.ndarray] | None, shapes: Mapping[str, Sequence[int]],
            seed: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The same inputs as torch tensors (for kiln) and numpy arrays (for onnxruntime)."""
    from kiln.runtime.arrays import array_to_tensor
    from kiln.runtime.synthetic import synthetic_inputs

    if feeds is not None:
        return {k: array_to_tensor(v) for k, v in feeds.items()}, dict(feeds)
    unknown = [n for n in shapes if n not in engine.input_names]
    if unknown:
        raise InputError(f"the shapes name input {unknown[0]!r}, which the engine does not have; its inputs "
                         f"are {', '.join(engine.input_names)}.")
    profile: dict[str, dict[str, Any]] = dict(engine.profiles[0]) if engine.profiles else {}
    profile.update({n: {"opt": list(d)} for n, d in shapes.items()})
    try:
        tensors = synthetic_inputs(engine.plan.inputs, profile, "opt", "cpu", seed)
    except ValueError as exc:
        raise InputError(f"{exc}; give its dims with --shapes NAME:DIMS.") from None
    return tensors, {k: to_numpy(t) for k, t in tensors.items()}


def run_engine(engine: Engine, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Outputs by name as numpy arrays (sequences stay lists)."""
    return {k: to_numpy(v) if _is_tensor(v) else v for k, v in engine.run_tensors(tensors).items()}


def run_onnxruntime(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The model under onnxruntime's CPU provider, outputs by name."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError("comparing against onnxruntime needs the onnxruntime package, which is not installed; "
                        "install it (pip install onnxruntime) or compare against a kiln fp32 engine "
                        "(--against fp32).") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: shape-inference warnings are noise here
    # Basic optimizations only: the reference should compute the graph as written.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds))))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise KilnError(f"onnxruntime could not run the model ({first}); compare against a kiln fp32 engine "
                        "instead (--against fp32).") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    # numpy has no bfloat16/float8: widen them to float32.
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    return t.numpy()


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)

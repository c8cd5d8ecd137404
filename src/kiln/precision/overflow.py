"""fp16 overflow, found at build time on the calibration data: the layers concerned keep fp32.

fp16's largest finite value is 65504. A layer computing in fp16 that meets a larger value
writes inf, and the next op turns it into NaN (inf - inf, 0 * inf, inf / inf). bf16 has
float32's exponent range, so it overflows only where fp32 does: bf16 engines need no check,
and neither do int8/fp8 engines whose float layers compute in fp32 (their float_precision, the default); with
float_precision fp16 they are checked like fp16 engines.

Rule. The optimised fp32 graph runs on the calibration batches with the reference ops (on
CPU, as calibration does), and every float32 tensor that an fp16 engine would hold in fp16 is
measured by its largest finite |t| (an inf or NaN that fp32 computes too is the model's own:
no wider type removes it). A tensor leaves fp16's range when
  - it is a graph input, a node output or an instruction result inside a kiln::Pointwise
    program (fused element-wise ops compute step by step in the node's type), and its
    max |t| > LIMIT = 65504 / 2. The margin: the calibration data is a sample of the inputs,
    and a tensor at half of fp16's range on it is one unusual input (or the fp16 rounding of
    its own inputs) away from inf;
  - it is a float32 constant a node reads (an input, an inlined program scalar, a tensor
    attribute) that fp16 rounds to inf, |c| >= 65520. Static, but checked here too: it is
    the same overflow, and a fused program hides it from the measurements.
One exception: an additive attention mask. A tensor read only as the mask of kiln::Attention
layers, whose out-of-range values are all negative (a -3.4e38 standing for -inf, as exported
by Hugging Face models), becomes -inf in fp16; adding -inf to a score gives a softmax weight
of 0, exactly what -3.4e38 gives in fp32, so neither the mask's writer nor the attention
layers are kept for it (without the exception every attention layer of such a model would
run in fp32). A layer that reads the -3.4e38 as a constant is still kept (it is cheap, and
arithmetic on -inf can be NaN where arithmetic on -3.4e38 is not: 0 * -inf); the attention
reads its fp32 output through a Cast to fp16. A row whose every key is masked differs (NaN
in fp16, a uniform softmax in fp32); no padding mask masks every key of a sequence.
Such a tensor must not exist in fp16, so its producer and every reader keep fp32 math (Shape
and Size read only shapes): a kept reader reads the fp32 tensor directly where an fp16 reader
would read it through a Cast to fp16, that is as inf. A chain of large tensors stays fp32 end
to end, and the first layer whose output is small again hands it back to fp16.

Mechanism: one exact-name fp32 layer precision rule per kept layer (layer_rules.py), after
the user's rules, so a user rule naming a layer wins: --layer-precision NAME=fp16 overrides
the check (for values meant to be inf in fp16, e.g. a -3.4e38 attention mask standing for
-inf), and the layer is then reported as overridden. The rules are part of the engine's
build_config, so `kiln rebuild` keeps the same layers in fp32 without the data. Layers holding
subgraphs (If, Loop) cannot take a rule and follow the engine precision.
Not measured: values inside fused kernels other than Pointwise programs (a FusedMatMul's sum
before its activation, partial sums of a reduction) and inside subgraphs; their outputs are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from glob import escape
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.ir import dtypes
from kiln.ir.graph import Graph, Node, Value
from kiln.kernels.reference.fused import pointwise
from kiln.kernels.reference.interpret import as_tensor, evaluate_node
from kiln.passes.match import const_array
from kiln.precision.decision import PrecisionReport
from kiln.precision.layer_rules import match_layer_rules

FP16_MAX = 65504.0
LIMIT = FP16_MAX / 2
FP16_INF_FROM = 65520.0  # the half-way point to 2^16: fp16 rounds |c| >= 65520 to inf
F32 = dtypes.FLOAT32
_SHAPE_ONLY = frozenset({"Shape", "Size"})


class Fp16OverflowWarning(UserWarning):
    """A layer overflows fp16 on the calibration data (kept in fp32, or overridden by a user rule)."""


@dataclass(frozen=True, slots=True)
class Overflow:
    """One layer that meets a tensor beyond fp16's range: the largest such tensor, and how it meets it."""
    layer: str
    op: str
    tensor: str  # the value's name; for "computes" the program step ("t1 (Mul)"); a constant's name or scalar
    amax: float  # largest finite |value| on the calibration data (the constant's, for "reads constant")
    role: str    # "writes" | "reads" | "computes" (an intermediate of its Pointwise program) | "reads constant"
    fused_from: tuple[str, ...] = ()
    rule: str = ""  # the user's rule that puts the layer in fp16 anyway; "" when the check keeps it in fp32

    @property
    def pattern(self) -> str:
        """A layer precision pattern matching this layer's name only (glob characters escaped)."""
        return escape(self.layer) if any(c in self.layer for c in "*?[") else self.layer

    @property
    def reason(self) -> str:
        if self.role == "reads constant":
            return (f"fp16 overflow: it reads the constant {self.tensor!r} of magnitude {self.amax:.4g}, which fp16 "
                    "rounds to inf")
        what = f"step {self.tensor} of its fused program" if self.role == "computes" else \
            f"the tensor it {self.role}, {self.tensor!r},"
        return (f"fp16 overflow on the calibration data: {what} reaches max |x| = {self.amax:.4g}, above {LIMIT:g} "
                f"(half of fp16's largest {FP16_MAX:g})")

    def warning(self) -> str:
        what = f"layer {self.layer!r} ({self.op}" + (f", fused from {', '.join(self.fused_from)}" if self.fused_from
                                                    else "") + ")"
        if self.rule:
            return (f"{what} is kept in fp16 by the layer precision rule {self.rule}, but meets {self.reason}; its "
                    "outputs may be inf or NaN. Drop the rule to let the build keep it in fp32.")
        return (f"{what} is kept in fp32: {self.reason}. If inf is intended there (e.g. a -3.4e38 mask standing "
                f"for -inf), keep it in fp16 with --layer-precision '{self.pattern}=fp16' (BuildConfig."
                "layer_precision).")

    def to_json(self) -> dict[str, Any]:
        out = {"layer": self.layer, "op": self.op, "tensor": self.tensor, "amax": self.amax,
               "role": self.role, "fused_from": list(self.fused_from)}
        if self.rule:
            out["rule"] = self.rule
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Overflow:
        return Overflow(str(data["layer"]), str(data["op"]), str(data["tensor"]), float(data["amax"]),
                        str(data["role"]), tuple(data.get("fused_from", ())), str(data.get("rule", "")))


@dataclass(frozen=True, slots=True)
class OverflowReport:
    """The outcome of the check: layers kept in fp32, and those a user rule keeps in fp16 regardless."""
    batches: int
    kept: tuple[Overflow, ...]
    overridden: tuple[Overflow, ...] = ()

    def rules(self) -> tuple[tuple[str, str], ...]:
        """The fp32 layer precision rules that keep `kept` (to append after the user's)."""
        return tuple((o.pattern, "fp32") for o in self.kept)

    def warnings(self) -> list[str]:
        return [o.warning() for o in (*self.kept, *self.overridden)]

    def explain(self, report: PrecisionReport) -> PrecisionReport:
        """`report` with the check's rules given their reason (the overflow), in place of "layer precision rule"."""
        why = {f"layer precision rule {o.pattern}=fp32": o for o in self.kept}
        layers = tuple(replace(d, reason=why[d.reason].reason) if d.reason in why and why[d.reason].layer == d.layer
                       else d for d in report.layers)
        return replace(report, layers=layers)

    def to_json(self) -> dict[str, Any]:
        return {"limit": LIMIT, "batches": self.batches, "kept_fp32": [o.to_json() for o in self.kept],
                "overridden": [o.to_json() for o in self.overridden]}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> OverflowReport:
        """The report an engine header's build.fp16_overflow holds."""
        return OverflowReport(int(data["batches"]), tuple(Overflow.from_json(o) for o in data["kept_fp32"]),
                              tuple(Overflow.from_json(o) for o in data.get("overridden", ())))


def find_fp16_overflow(graph: Graph, batches: Iterable[Mapping[str, Any]],
                       rules: Sequence[tuple[str, str]] = ()) -> OverflowReport:
    """The layers of the fp32 `graph` that overflow fp16 on `batches` (module docstring).

    `rules`: the build's layer precision rules; a layer they name is not kept by the check
    (reported as overridden when the rule says fp16)."""
    values, highs, programs, n = _measure(graph, batches)
    found: dict[int, Overflow] = {}

    def flag(node: Node | None, tensor: str, amax: float, role: str) -> None:
        if node is None or not _reducible(node):
            return
        if id(node) not in found or amax > found[id(node)].amax:
            found[id(node)] = Overflow(node.name, node.qualified_op, tensor, amax, role, node.fused_from)

    for v in _activations(graph):
        if values.get(id(v), 0.0) > LIMIT and not _negative_mask(graph, v, highs.get(id(v), 0.0)):
            flag(v.producer(), v.name, values[id(v)], "writes")
            for reader in v.consumers():
                flag(reader, v.name, values[id(v)], "reads")
    for node in graph.nodes:
        for k, instr in enumerate(node.attrs.get("program", ()) if node.qualified_op == "kiln::Pointwise" else ()):
            if programs.get((id(node), k), 0.0) > LIMIT:
                flag(node, f"t{k} ({instr[0]})", programs[(id(node), k)], "computes")
        big = _constant_overflow(node)
        if big is not None:
            flag(node, big[0], big[1], "reads constant")
    chosen = match_layer_rules(graph, rules)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    kept, overridden = [], []
    for key in sorted(found, key=order.__getitem__):
        if key not in chosen:
            kept.append(found[key])
        elif chosen[key][0] == "fp16":
            precision, pattern = chosen[key]
            overridden.append(replace(found[key], rule=f"{pattern}={precision}"))
    return OverflowReport(n, tuple(kept), tuple(overridden))


# ---------------------------------------------------------------- measuring


def _measure(graph: Graph, batches: Iterable[Mapping[str, Any]]
             ) -> tuple[dict[int, float], dict[int, float], dict[tuple[int, int], float], int]:
    """Largest finite |t| over the batches: id(value) -> of each float32 input and node output,
    the largest finite t (signed) of the same, (id(node), k) -> |t| of instruction k's result in
    each kiln::Pointwise program (float32 ones); and the batch count.
    Tensors are freed after their last reader, so memory stays near one forward pass."""
    values: dict[int, float] = {}
    highs: dict[int, float] = {}
    programs: dict[tuple[int, int], float] = {}
    last = {id(v): k for k, n in enumerate(graph.nodes) for v in n.inputs if v is not None and not v.is_const}
    outputs = {id(v) for v in graph.outputs}
    n = 0
    for feed in batches:
        env: dict[int, Any] = {}
        for v in graph.inputs:
            if v.name not in feed:
                raise KilnError(f"calibration feed lacks input {v.name!r} of graph {graph.name!r}; key the arrays "
                                "by input name.")
            env[id(v)] = as_tensor(feed[v.name])
            _note(values, id(v), env[id(v)], highs)
        for k, node in enumerate(graph.nodes):
            args = [None if v is None else env[id(v)] if id(v) in env else as_tensor(v.const) for v in node.inputs]
            for o, t in zip(node.outputs, evaluate_node(node, args)):
                env[id(o)] = t
                _note(values, id(o), t, highs)
            if node.qualified_op == "kiln::Pointwise":
                for step, t in enumerate(_program_steps(node, args)):
                    _note(programs, (id(node), step), t)
            for v in node.inputs:
                if v is not None and last.get(id(v)) == k and id(v) not in outputs:
                    env.pop(id(v), None)
        n += 1
    if n == 0:
        raise KilnError(f"the calibration data gave no batches for graph {graph.name!r}; pass at least one feed "
                        "dict {input name: array} to check fp16 overflow on.")
    return values, highs, programs, n


def _note(seen: dict[Any, float], key: Any, t: object, highs: dict[Any, float] | None = None) -> None:
    """seen[key] = the largest finite |t| so far, for a float32 tensor t; highs[key] the largest finite t."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.numel() == 0:
        return
    t = t.detach()
    low, high = (float(x) for x in torch.aminmax(t))
    if not (math.isfinite(low) and math.isfinite(high)):  # an inf or NaN (aminmax propagates NaN): mask them out
        finite = t[torch.isfinite(t)]
        if not finite.numel():
            return
        low, high = float(finite.min()), float(finite.max())
    seen[key] = max(seen.get(key, 0.0), -low, high)
    if highs is not None:
        highs[key] = max(highs.get(key, -math.inf), high)


def _program_steps(node: Node, args: list[Any]) -> tuple[torch.Tensor, ...]:
    """Every instruction result of the node's Pointwise program, on these inputs."""
    program = node.attrs["program"]
    steps = pointwise(*args, program=program, outputs=[f"t{k}" for k in range(len(program))],
                      n_outputs=len(program))
    return steps if isinstance(steps, tuple) else (steps,)


def _constant_overflow(node: Node) -> tuple[str, float] | None:
    """(name, |c|) of the largest float32 constant the node reads that fp16 rounds to inf, if any."""
    found: list[tuple[str, float]] = []
    for v in node.inputs:
        if v is not None and v.is_const and v.dtype == F32:
            found.append((v.name, _finite_amax(const_array(v))))
    for k, a in node.attrs.items():
        if isinstance(a, np.ndarray) and a.dtype == np.float32:
            found.append((f"{node.name}.{k}", _finite_amax(a)))
    for instr in node.attrs.get("program", ()) if node.qualified_op == "kiln::Pointwise" else ():
        for arg in instr[1]:
            if isinstance(arg, dict) and arg.get("dtype") == "float32" and math.isfinite(float(arg["const"])):
                found.append((f"{float(arg['const']):g} in its program", abs(float(arg["const"]))))
    big = [f for f in found if f[1] >= FP16_INF_FROM]
    return max(big, key=lambda f: f[1]) if big else None


def _finite_amax(a: np.ndarray) -> float:
    mag = np.abs(a[np.isfinite(a)])
    return float(mag.max()) if mag.size else 0.0


# ---------------------------------------------------------------- which tensors and layers


def _activations(graph: Graph) -> list[Value]:
    """The float32 tensors an fp16 engine would move to fp16: graph inputs and node outputs."""
    outs = [o for n in graph.nodes for o in n.outputs]
    return [v for v in (*graph.inputs, *outs) if v.dtype == F32 and v.kind == "tensor"]


def _negative_mask(graph: Graph, v: Value, high: float) -> bool:
    """An additive attention mask whose overflow is -inf only (module docstring: the exception)."""
    readers = v.consumers()
    return (high <= LIMIT and bool(readers) and all(v is not o for o in graph.outputs)
            and all(r.qualified_op == "kiln::Attention" and len(r.inputs) > 3 and r.inputs[3] is v
                    and not any(x is v for x in r.inputs[:3]) for r in readers))


def _reducible(node: Node) -> bool:
    """A layer whose math an fp16 engine moves to fp16 and a layer rule can keep in fp32."""
    if not node.domain and node.op in _SHAPE_ONLY:
        return False
    if any(isinstance(a, Graph) or isinstance(a, list) and any(isinstance(g, Graph) for g in a)
           for a in node.attrs.values()):
        return False
    return any(v is not None and v.dtype == F32 for v in (*node.inputs, *node.outputs))

"""Graph -> Plan: number the tensors, pick a tactic per node, and plan memory.

Tactic choice here is "first supported candidate" (faster tactics register before the
reference ones); the auto-tuner replaces `choose_tactic` without touching the plan format.
"""
from __future__ import annotations

from typing import Callable

import torch

from kiln.engine.plan import Binding, MemoryReport, Plan, Slot, Step
from kiln.errors import BuildError
from kiln.ir.graph import Graph, Value
from kiln.runtime import memory
from kiln.tactics import TacticQuery, candidates

Prober = Callable[[Plan, dict[int, torch.Tensor]], dict[int, int]]


def choose_tactic(node_op: str, device: str, input_dtypes: tuple[str | None, ...], attrs: dict) -> str:
    found = candidates(TacticQuery(node_op, device, input_dtypes, attrs))
    if not found:
        raise BuildError(f"no tactic can run op {node_op} on {device} with inputs {input_dtypes}; "
                         "build for another device or precision.")
    return found[0].name


def _dims(v: Value) -> tuple[int | str, ...] | None:
    return None if v.shape is None else tuple(v.shape)


def lower(graph: Graph, device: str) -> tuple[Plan, dict[str, torch.Tensor]]:
    """The plan (with free lists but no memory offsets yet) and its constants by key."""
    slots: list[Slot] = []
    index: dict[int, int] = {}
    consts: dict[str, torch.Tensor] = {}

    def slot_of(v: Value, kind: str) -> int:
        if id(v) in index:
            return index[id(v)]
        key = None
        if v.is_const:
            kind, key = "const", f"const/{v.name}"
            c = v.const
            consts[key] = c if isinstance(c, torch.Tensor) else torch.from_numpy(c.copy())
        index[id(v)] = len(slots)
        slots.append(Slot(v.name, None if v.dtype is None else v.dtype.name, _dims(v), kind, key))
        return index[id(v)]

    inputs = tuple(Binding(v.name, v.dtype.name if v.dtype else "float32", _dims(v) or (), slot_of(v, "input"))
                   for v in graph.inputs)
    steps: list[Step] = []
    for n in graph.nodes:
        ins = tuple(None if v is None else slot_of(v, "activation") for v in n.inputs)
        outs = tuple(slot_of(v, "activation") for v in n.outputs)
        dts = tuple(None if v is None or v.dtype is None else v.dtype.name for v in n.inputs)
        tactic = choose_tactic(n.qualified_op, device, dts, n.attrs)
        fused = tuple(n.attrs.pop("_fused_from", ()) or ())
        steps.append(Step(n.name, n.qualified_op, tactic, ins, outs, dict(n.attrs), fused))
    outputs = tuple(Binding(v.name, v.dtype.name if v.dtype else "float32", _dims(v) or (), slot_of(v, "activation"))
                    for v in graph.outputs)
    activation = {i for i, s in enumerate(slots) if s.kind == "activation"}
    keep = {b.slot for b in outputs}
    io = [(s.inputs, s.outputs) for s in steps]
    lives = memory.lifetimes(io, activation, {}, keep)
    plan = Plan(inputs, outputs, tuple(slots), tuple(steps), memory.free_lists(len(steps), lives),
                MemoryReport(0, 0))
    return plan, consts


def plan_memory(plan: Plan, sizes: dict[int, int]) -> Plan:
    """Attach the liveness-based arena plan, given each activation's bytes at opt shapes."""
    activation = {i for i, s in enumerate(plan.slots) if s.kind == "activation"}
    keep = {b.slot for b in plan.outputs}
    lives = memory.lifetimes([(s.inputs, s.outputs) for s in plan.steps], activation, sizes, keep)
    peak, offsets = memory.assign_offsets(lives)
    # The total counts aligned sizes too, as the peak does, so that peak <= total always holds.
    report = MemoryReport(peak, sum(memory.aligned(life.size) for life in lives), tuple(tuple(o) for o in offsets))
    return Plan(plan.inputs, plan.outputs, plan.slots, plan.steps, plan.free_after, report)

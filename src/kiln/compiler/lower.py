"""Graph -> Plan: number the tensors, pick a tactic per node, and plan memory.

Tactic choice here is "first supported candidate" (faster tactics register before the
reference ones), with its first config. On a GPU the auto-tuner (tuning_pass.py) then
times the candidates at the opt shapes and rewrites each step's tactic and config.
"""
from __future__ import annotations

import torch

from kiln.engine.plan import Binding, MemoryReport, Plan, Slot, Step, SubPlan
from kiln.errors import BuildError
from kiln.ir.graph import Graph, Node, Value
from kiln.runtime import memory
from kiln.tactics import Tactic, TacticQuery, candidates, get_tactic
from kiln.tactics.placement import HOST_INPUTS, HOST_OPS, MAX_HOST_CONST_ELEMENTS


def choose_tactic(query: TacticQuery) -> Tactic:
    found = candidates(query)
    if not found:
        raise BuildError(f"no tactic can run op {query.op} on {query.device} with inputs {query.input_dtypes}; "
                         "build for another device or precision.")
    return found[0]


def _dims(v: Value) -> tuple[int | str, ...] | None:
    return None if v.shape is None else tuple(v.shape)


def lower(graph: Graph, device: str) -> tuple[Plan, dict[str, torch.Tensor]]:
    """The plan (with free lists but no memory offsets yet) and its constants by key.

    On CUDA, shape arithmetic is placed on the host (see tactics/placement.py): a step is
    a host step when its tactic says so (Shape, Size) or when it is a small integer op all
    of whose inputs are host values or small constants, at least one being a host value.
    """
    slots: list[Slot] = []
    index: dict[tuple[int, bool], int] = {}
    consts: dict[str, torch.Tensor] = {}
    host_values: set[int] = set()

    def slot_of(v: Value, kind: str, on_host: bool = False) -> int:
        key_id = (id(v), on_host and v.is_const)
        if key_id in index:
            return index[key_id]
        key = None
        if v.is_const:
            kind, key = "const", f"const/{v.name}"
            c = v.const
            consts[key] = c if isinstance(c, torch.Tensor) else torch.from_numpy(c.copy())
        index[key_id] = len(slots)
        slots.append(Slot(v.name, None if v.dtype is None else v.dtype.name, _dims(v), kind, key,
                          host=on_host and v.is_const))
        return index[key_id]

    def is_host_step(n: Node, placement: str) -> bool:
        if device != "cuda":
            return False
        if placement == "host":
            return True
        present = [v for v in n.inputs if v is not None]
        return (_host_op(n) and any(id(v) in host_values for v in present)
                and all(id(v) in host_values or (v.is_const and _small(v)) for v in present))

    inputs = tuple(Binding(v.name, v.dtype.name if v.dtype else "float32", _dims(v) or (), slot_of(v, "input"),
                           v.kind) for v in graph.inputs)
    steps: list[Step] = []
    dim_max = graph.dim_max
    for n in graph.nodes:
        dts = tuple(None if v is None or v.dtype is None else v.dtype.name for v in n.inputs)
        # Shapes as inferred (symbolic dims as str): the tactic must hold over the whole profile.
        shapes = tuple(None if v is None else _dims(v) for v in n.inputs)
        tactic = choose_tactic(TacticQuery(n.qualified_op, device, dts, n.attrs, shapes, graph.layout,
                                             len(n.outputs), dim_max))
        host = is_host_step(n, tactic.placement)
        if host and tactic.placement != "host":
            tactic = get_tactic(f"{n.qualified_op}.reference")  # host steps compute on host tensors
        params = HOST_INPUTS.get(n.op, ()) if not n.domain and device == "cuda" else ()
        ins = tuple(None if v is None else slot_of(v, "activation", on_host=host or i in params)
                    for i, v in enumerate(n.inputs))
        h2d = () if host else tuple(i for i, v in enumerate(n.inputs)
                                    if v is not None and id(v) in host_values and i not in params)
        outs = tuple(slot_of(v, "activation") for v in n.outputs)
        if host:
            host_values.update(id(v) for v in n.outputs)
        attrs, captured = _lower_bodies(n, device)
        ins += tuple(slot_of(v, "activation") for v in captured)
        steps.append(Step(n.name, n.qualified_op, tactic.name, ins, outs, attrs, n.fused_from, host, h2d, len(captured),
                          dict(tactic.configs[0])))
    outputs = tuple(Binding(v.name, v.dtype.name if v.dtype else "float32", _dims(v) or (), slot_of(v, "activation"),
                            v.kind) for v in graph.outputs)
    activation = {i for i, s in enumerate(slots) if s.kind == "activation"}
    keep = {b.slot for b in outputs}
    io = [(s.inputs, s.outputs) for s in steps]
    lives = memory.lifetimes(io, activation, {}, keep)
    plan = Plan(inputs, outputs, tuple(slots), tuple(steps), memory.free_lists(len(steps), lives),
                MemoryReport(0, 0))
    return plan, consts


def _lower_bodies(n: Node, device: str) -> tuple[dict, list[Value]]:
    """The node's attributes with each subgraph compiled to a SubPlan, and the outer values
    the subgraphs capture (the union, in one order: every body takes all of them)."""
    bodies = [g for a in n.attrs.values() for g in (a if isinstance(a, list) else [a]) if isinstance(g, Graph)]
    if not bodies:
        return dict(n.attrs), []
    captured: dict[int, Value] = {}
    for g in bodies:
        for v in g.captured_values():
            captured.setdefault(id(v), v)
    caps = list(captured.values())

    def compile_body(g: Graph) -> SubPlan:
        wrapper = Graph(g.name, g.opset)
        wrapper.inputs, wrapper.nodes, wrapper.outputs = list(g.inputs) + caps, g.nodes, g.outputs
        plan, consts = lower(wrapper, device)
        return SubPlan(plan, consts)

    attrs = {}
    for k, a in n.attrs.items():
        if isinstance(a, Graph):
            attrs[k] = compile_body(a)
        elif isinstance(a, list) and a and all(isinstance(g, Graph) for g in a):
            attrs[k] = [compile_body(g) for g in a]
        else:
            attrs[k] = a
    return attrs, caps


def _host_op(n: Node) -> bool:
    """Ops that may run on the host on shape values; a fused element-wise group qualifies when
    all its instructions do (fuse_pointwise also groups shape arithmetic like Where(Equal(..)))."""
    if not n.domain:
        return n.op in HOST_OPS
    if n.qualified_op == "kiln::Pointwise":
        return all(op in HOST_OPS for op, _args, _attrs in n.attrs.get("program", []))
    return False


def _small(v: Value) -> bool:
    c = v.const
    n = c.numel() if isinstance(c, torch.Tensor) else c.size
    return n <= MAX_HOST_CONST_ELEMENTS


def plan_memory(plan: Plan, sizes: dict[int, int]) -> Plan:
    """Attach the liveness-based arena plan, given each activation's bytes at opt shapes."""
    report = memory.plan_report(plan, sizes)
    return Plan(plan.inputs, plan.outputs, plan.slots, plan.steps, plan.free_after, report)

"""Plan <-> JSON. Tensor-valued attributes travel in the engine's tensor section."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.engine.plan import Binding, MemoryReport, Plan, Slot, Step, SubPlan, Tuning
from kiln.errors import EngineFormatError

_TENSOR = "$tensor"
_SUBPLAN = "$subplan"


def _encode_attr(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, SubPlan):
        data, inner = plan_to_json(value.plan, prefix=f"{key}/")
        tensors.update(inner)
        consts = {k: _encode_attr(t, f"{key}/{k}", tensors) for k, t in value.constants.items()}
        return {_SUBPLAN: data, "constants": consts}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        t = torch.from_numpy(np.asarray(value, order="C")) if isinstance(value, np.ndarray) else value
        tensors[key] = t
        return {_TENSOR: key}
    if isinstance(value, (list, tuple)):
        return [_encode_attr(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _encode_attr(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    raise TypeError(f"attribute {key} of type {type(value).__name__} cannot be stored in an engine")


def _decode_attr(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            t = tensors[value[_TENSOR]]
            return t.numpy() if t.dtype not in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2) else t
        if set(value) == {_SUBPLAN, "constants"}:
            consts = {k: tensors[v[_TENSOR]] for k, v in value["constants"].items()}
            return SubPlan(plan_from_json(value[_SUBPLAN], tensors), consts)
        return {k: _decode_attr(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_attr(v, tensors) for v in value]
    return value


def plan_to_json(plan: Plan, prefix: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    steps = []
    for i, s in enumerate(plan.steps):
        steps.append({"name": s.name, "op": s.op, "tactic": s.tactic, "inputs": list(s.inputs),
                      "outputs": list(s.outputs), "fused": list(s.fused),
                      "host": s.host, "h2d": list(s.h2d), "captures": s.captures, "config": s.config,
                      **({} if s.tuning is None else {"tuning": _tuning_to_json(s.tuning)}),
                      "attrs": {k: _encode_attr(v, f"{prefix}attr/{i}/{k}", tensors) for k, v in s.attrs.items()}})
    data = {
        "inputs": [_binding(b) for b in plan.inputs],
        "outputs": [_binding(b) for b in plan.outputs],
        "slots": [{"name": s.name, "dtype": s.dtype, "shape": None if s.shape is None else list(s.shape),
                   "kind": s.kind, "const_key": s.const_key, "host": s.host} for s in plan.slots],
        "steps": steps,
        "free_after": [list(f) for f in plan.free_after],
        "memory": {"peak_bytes": plan.memory.peak_bytes, "total_bytes": plan.memory.total_bytes,
                   "offsets": [list(o) for o in plan.memory.offsets]},
    }
    return data, tensors


def plan_from_json(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Plan:
    try:
        return Plan(
            inputs=tuple(Binding(b["name"], b["dtype"], tuple(b["shape"]), b["slot"], b.get("kind", "tensor"))
                         for b in data["inputs"]),
            outputs=tuple(Binding(b["name"], b["dtype"], tuple(b["shape"]), b["slot"], b.get("kind", "tensor"))
                          for b in data["outputs"]),
            slots=tuple(Slot(s["name"], s["dtype"], None if s["shape"] is None else tuple(s["shape"]), s["kind"],
                             s["const_key"], s.get("host", False)) for s in data["slots"]),
            steps=tuple(Step(s["name"], s["op"], s["tactic"], tuple(s["inputs"]), tuple(s["outputs"]),
                             {k: _decode_attr(v, tensors) for k, v in s["attrs"].items()}, tuple(s["fused"]),
                             s.get("host", False), tuple(s.get("h2d", ())), s.get("captures", 0),
                             dict(s.get("config", {})), _tuning_from_json(s.get("tuning")))
                        for s in data["steps"]),
            free_after=tuple(tuple(f) for f in data["free_after"]),
            memory=MemoryReport(data["memory"]["peak_bytes"], data["memory"]["total_bytes"],
                                tuple(tuple(o) for o in data["memory"]["offsets"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineFormatError(f"the engine's plan is malformed ({type(exc).__name__}: {exc}); rebuild the engine.") from None


def _binding(b: Binding) -> dict[str, Any]:
    return {"name": b.name, "dtype": b.dtype, "shape": list(b.shape), "slot": b.slot, "kind": b.kind}


def _tuning_to_json(t: Tuning) -> dict[str, Any]:
    return {"ms": t.ms, "runner_up": t.runner_up, "runner_up_config": t.runner_up_config,
            "runner_up_ms": t.runner_up_ms, "candidates": t.candidates, "cached": t.cached}


def _tuning_from_json(data: dict[str, Any] | None) -> Tuning | None:
    """Engines from before the tuner have no record; one from a newer kiln may have more keys."""
    if data is None:
        return None
    return Tuning(data.get("ms"), data.get("runner_up"), dict(data.get("runner_up_config") or {}),
                  data.get("runner_up_ms"), int(data.get("candidates", 0)), bool(data.get("cached", False)))

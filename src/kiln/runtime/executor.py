"""Runs a plan: a flat loop over steps, reading and writing numbered slots.

Kernels and decoded attributes are resolved once at construction, so a run is only the
loop. Activations are dropped after their last reader (the plan's free lists), which
hands their memory back to torch's caching allocator for the next ones to reuse.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from kiln.engine.plan import Plan, SubPlan
from kiln.errors import KilnError
from kiln.tactics import get_tactic


class StepError(KilnError):
    """A kernel failed while running one step of the plan."""


def constants_by_slot(plan: Plan, constants: Mapping[str, torch.Tensor], device: torch.device) -> dict[int, torch.Tensor]:
    """Each const slot's tensor: on `device`, or on the host for host-kept constants."""
    moved: dict[str, torch.Tensor] = {}
    out = {}
    for i, s in enumerate(plan.slots):
        if s.kind != "const":
            continue
        t = constants[s.const_key]
        if not s.host:
            if s.const_key not in moved:
                moved[s.const_key] = t.to(device)
            t = moved[s.const_key]
        out[i] = t
    return out


class Body:
    """A compiled subgraph, called by control-flow kernels as `body(*inputs) -> list`.

    `bind(captures)` returns the callable with the outer values it reads attached."""

    def __init__(self, sub: SubPlan, device: torch.device) -> None:
        self.plan = sub.plan
        self.device = device
        self.executor = Executor(sub.plan, constants_by_slot(sub.plan, sub.constants, device), device)

    def bind(self, captures: list[Any]) -> Callable[..., list[Any]]:
        def run(*inputs: Any) -> list[Any]:
            values = list(inputs) + list(captures)
            feeds = {b.slot: v for b, v in zip(self.plan.inputs, values)}
            env = self.executor.run(feeds, device=self.device)
            return [env[b.slot] for b in self.plan.outputs]
        run.num_outputs = len(self.plan.outputs)  # type: ignore[attr-defined]
        run.output_dtypes = [b.dtype for b in self.plan.outputs]  # type: ignore[attr-defined]
        return run


def _resolve(value: Any, device: torch.device) -> Any:
    if isinstance(value, SubPlan):
        return Body(value, device)
    if isinstance(value, list) and value and all(isinstance(v, SubPlan) for v in value):
        return [Body(v, device) for v in value]
    return value


def _is_body(value: Any) -> bool:
    return isinstance(value, Body) or isinstance(value, list) and bool(value) and isinstance(value[0], Body)


def _bind(value: Any, captures: list[Any]) -> Any:
    if isinstance(value, Body):
        return value.bind(captures)
    if _is_body(value):
        return [b.bind(captures) for b in value]
    return value


def _describe(a: Any) -> str:
    if isinstance(a, torch.Tensor):
        return f"{tuple(a.shape)}:{str(a.dtype).removeprefix('torch.')}"
    if isinstance(a, list):
        return f"sequence of {len(a)}"
    return "None" if a is None else type(a).__name__


class Executor:
    def __init__(self, plan: Plan, constants: dict[int, torch.Tensor], device: torch.device | None = None) -> None:
        self.plan = plan
        self.constants = constants
        self._kernels: list[Callable[..., Any]] = [get_tactic(s.tactic).kernel for s in plan.steps]
        dev = device or torch.device("cpu")
        self._attrs = [{k: _resolve(v, dev) for k, v in s.attrs.items()} for s in plan.steps]
        for attrs, s in zip(self._attrs, plan.steps):
            if s.config:
                attrs["config"] = dict(s.config)
        self._has_body = [any(_is_body(v) for v in a.values()) for a in self._attrs]
        # Device steps without inputs (RandomUniform ...) make their outputs on the host: moved after.
        self._to_device = [not s.host and all(i is None for i in s.inputs) for s in plan.steps]

    def run(self, feeds: dict[int, torch.Tensor], record_sizes: dict[int, int] | None = None,
            h2d_memo: dict[tuple[int, int], torch.Tensor] | None = None,
            device: torch.device | None = None) -> list[torch.Tensor | None]:
        """Execute with input slots bound in `feeds`; returns the slot table after the run.

        Host values a device step reads as data are copied to `device` first. With
        `h2d_memo`, each copy is made once per (step, input) and reused: valid because host
        values depend only on input shapes, and required while a CUDA graph is captured.
        """
        env: list[torch.Tensor | None] = [None] * len(self.plan.slots)
        for slot, t in self.constants.items():
            env[slot] = t
        for slot, t in feeds.items():
            env[slot] = t
        for k, (step, kernel, free) in enumerate(zip(self.plan.steps, self._kernels, self.plan.free_after)):
            args = [env[i] if i is not None else None for i in step.inputs]
            attrs = self._attrs[k]
            if self._has_body[k]:
                caps = args[len(args) - step.captures:] if step.captures else []
                args = args[:len(args) - step.captures]
                attrs = {name: _bind(v, caps) for name, v in attrs.items()}
            for pos in step.h2d:
                if args[pos] is not None and device is not None:
                    if h2d_memo is None:
                        args[pos] = args[pos].to(device)
                    else:
                        if (k, pos) not in h2d_memo:
                            h2d_memo[(k, pos)] = args[pos].to(device)
                        args[pos] = h2d_memo[(k, pos)]
            while args and args[-1] is None:
                args.pop()
            try:
                result = kernel(*args, **attrs)
            except KilnError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised with the step named
                shapes = ", ".join(_describe(a) for a in args)
                raise StepError(f"layer {step.name!r} ({step.op}, tactic {step.tactic}) failed on inputs "
                                f"[{shapes}]: {type(exc).__name__}: {exc}. The inputs may be outside what the "
                                "model accepts; check them, or report the model if they are valid.") from exc
            if isinstance(result, torch.Tensor) or len(step.outputs) == 1 and not isinstance(result, tuple):
                result = (result,)
            for slot, t in zip(step.outputs, result):
                if self._to_device[k] and device is not None and isinstance(t, torch.Tensor):
                    t = t.to(device)
                env[slot] = t
                if record_sizes is not None and isinstance(t, torch.Tensor):
                    record_sizes[slot] = t.numel() * t.element_size()
            for slot in free:
                env[slot] = None
        return env
